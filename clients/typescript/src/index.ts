// A typed memagent client for Node.js. The message and service types are generated from
// proto/memagent/v1/memagent.proto (`npm run generate`); the .proto itself is loaded at run time.
import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as loader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "./generated/memagent";
import type { AskResponse__Output } from "./generated/memagent/v1/AskResponse";
import type { ChatMessage } from "./generated/memagent/v1/ChatMessage";
import type { Entry__Output } from "./generated/memagent/v1/Entry";
import type { GenerateResponse__Output } from "./generated/memagent/v1/GenerateResponse";
import type { Memory__Output } from "./generated/memagent/v1/Memory";
import type { MemoryServiceClient } from "./generated/memagent/v1/MemoryService";
import type { Receipt__Output } from "./generated/memagent/v1/Receipt";
import type { SamplingOptions } from "./generated/memagent/v1/SamplingOptions";
import type { Usage__Output } from "./generated/memagent/v1/Usage";

export type { AskResponse__Output as Answer, ChatMessage, Entry__Output as Entry, Memory__Output as Memory, Receipt__Output as Receipt };
export type { SamplingOptions, Usage__Output as Usage };

const PROTO_DIR = path.join(__dirname, "..", "proto");
const LOADER_OPTIONS = { includeDirs: [PROTO_DIR], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

export interface ClientOptions {
  /** host:port; default $MEMAGENT_SERVER, else 127.0.0.1:50051. */
  address?: string;
  /** Bearer token naming your tenant; default $MEMAGENT_TOKEN (none for a server run with --no-auth). */
  token?: string;
  /** Seconds each call may take. */
  timeout?: number;
  /** Serve over TLS (system roots unless rootCertificates is given). */
  tls?: boolean;
  rootCertificates?: Buffer;
}

/** A call the server refused: `code` is the gRPC status name, e.g. "NOT_FOUND". */
export class MemAgentError extends Error {
  constructor(readonly code: string, readonly details: string) {
    super(`${code}: ${details}`);
  }
}

/** Text pieces as the server decodes them; `usage` is set once the stream ended. */
export class Generation implements AsyncIterable<string> {
  usage: Usage__Output | null = null;

  constructor(private readonly call: grpc.ClientReadableStream<GenerateResponse__Output>) {}

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    try {
      for await (const response of this.call as AsyncIterable<GenerateResponse__Output>) {
        if (response.event === "text") yield response.text ?? "";
        else if (response.event === "usage") this.usage = response.usage ?? null;
      }
    } catch (err) {
      throw asError(err);
    } finally {
      this.call.cancel(); // an abandoned stream stops the server's decoding
    }
  }

  /** The whole text. */
  async text(): Promise<string> {
    let text = "";
    for await (const piece of this) text += piece;
    return text;
  }
}

export class MemAgentClient {
  private readonly stub: MemoryServiceClient;
  private readonly metadata = new grpc.Metadata();
  private readonly timeout?: number;

  constructor(options: ClientOptions = {}) {
    const address = options.address ?? process.env.MEMAGENT_SERVER ?? "127.0.0.1:50051";
    const token = options.token ?? process.env.MEMAGENT_TOKEN;
    if (token) this.metadata.set("authorization", `Bearer ${token}`);
    this.timeout = options.timeout;
    const proto = grpc.loadPackageDefinition(loader.loadSync("memagent/v1/memagent.proto", LOADER_OPTIONS)) as unknown as ProtoGrpcType;
    const credentials = options.tls || options.rootCertificates
      ? grpc.credentials.createSsl(options.rootCertificates)
      : grpc.credentials.createInsecure();
    this.stub = new proto.memagent.v1.MemoryService(address, credentials);
  }

  close(): void {
    this.stub.close();
  }

  create(memory_id: string): Promise<Memory__Output> {
    return this.unary("Create", { memory_id });
  }

  get(memory_id: string): Promise<Memory__Output> {
    return this.unary("Get", { memory_id });
  }

  async list(): Promise<Memory__Output[]> {
    const memories: Memory__Output[] = [];
    let page_token = "";
    do {
      const page = await this.unary<{ memories: Memory__Output[]; next_page_token: string }>("List", { page_token });
      memories.push(...page.memories);
      page_token = page.next_page_token;
    } while (page_token);
    return memories;
  }

  async delete(memory_id: string): Promise<void> {
    await this.unary("Delete", { memory_id });
  }

  reset(memory_id: string): Promise<Memory__Output> {
    return this.unary("Reset", { memory_id });
  }

  /** Write `text` into the memory; resolves once it is durable and applied. */
  async inject(memory_id: string, text: string, source = "", metadata: Record<string, string> = {}): Promise<Receipt__Output> {
    const response = await this.unary<{ receipts: Receipt__Output[] }>("Inject", { memory_id, texts: [{ text, source, metadata }] });
    return response.receipts[0];
  }

  async entries(memory_id: string): Promise<Entry__Output[]> {
    const entries: Entry__Output[] = [];
    let page_token = "";
    do {
      const page = await this.unary<{ entries: Entry__Output[]; next_page_token: string }>("ListEntries", { memory_id, page_token });
      entries.push(...page.entries);
      page_token = page.next_page_token;
    } while (page_token);
    return entries;
  }

  /** Remove entries and rebuild the memory from the rest of its log. */
  async forget(memory_id: string, entry_ids: number[]): Promise<number> {
    return (await this.unary<{ forgotten: number }>("Forget", { memory_id, entry_ids })).forgotten;
  }

  /** A short answer from what the memory holds; exactly "I don't know." when it holds none
   * (with `grounded`, also when no write supports the answer). */
  async ask(memory_id: string, question: string, options: SamplingOptions = {}, grounded = false): Promise<string> {
    return (await this.askWithUsage(memory_id, question, options, grounded)).answer;
  }

  /** `ask`'s answer with its usage and `abstained`: true when the answer is "I don't know.". */
  askWithUsage(
    memory_id: string,
    question: string,
    options: SamplingOptions = {},
    grounded = false,
  ): Promise<AskResponse__Output> {
    return this.unary<AskResponse__Output>("Ask", { memory_id, question, options, grounded });
  }

  /** The continuation of `prompt`, streamed. */
  generate(memory_id: string, prompt: string, options: SamplingOptions = {}): Generation {
    return new Generation(this.stub.Generate({ memory_id, prompt, options }, this.metadata, this.callOptions()));
  }

  /** The assistant's reply to `messages`, streamed. */
  chat(memory_id: string, messages: ChatMessage[], options: SamplingOptions = {}): Generation {
    return new Generation(this.stub.Chat({ memory_id, messages, options }, this.metadata, this.callOptions()));
  }

  private callOptions(): grpc.CallOptions {
    return this.timeout ? { deadline: Date.now() + this.timeout * 1000 } : {};
  }

  private unary<T>(method: string, request: object): Promise<T> {
    const call = (this.stub as unknown as Record<string, Function>)[method].bind(this.stub);
    return new Promise((resolve, reject) =>
      call(request, this.metadata, this.callOptions(), (err: grpc.ServiceError | null, reply: T) =>
        err ? reject(asError(err)) : resolve(reply),
      ),
    );
  }
}

function asError(err: unknown): unknown {
  const status = err as grpc.ServiceError;
  return typeof status?.code === "number" ? new MemAgentError(grpc.status[status.code], status.details) : err;
}
