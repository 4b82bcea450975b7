// A memagent client in Node.js, made from proto/memagent/v1/memagent.proto alone (no generated code).
//   npm install && node client.js ../../proto 127.0.0.1:50051      (MEMAGENT_TOKEN=... when auth is on)
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [protoDir = "../../proto", address = "127.0.0.1:50051"] = process.argv.slice(2);
const options = { includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };
const { MemoryService } = grpc.loadPackageDefinition(loader.loadSync("memagent/v1/memagent.proto", options)).memagent.v1;
const client = new MemoryService(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.MEMAGENT_TOKEN) metadata.set("authorization", `Bearer ${process.env.MEMAGENT_TOKEN}`);
const unary = (method, request) =>
  new Promise((resolve, reject) => client[method](request, metadata, (err, reply) => (err ? reject(err) : resolve(reply))));

async function main() {
  const memory_id = `node-${Date.now()}`;
  await unary("Create", { memory_id });
  const { receipts } = await unary("Inject", { memory_id, texts: [{ text: "Kim's bike is blue.", source: "node" }] });
  console.log("receipt", receipts[0]);
  const stream = client.Generate({ memory_id, prompt: "Kim's bike is", options: { max_new_tokens: 8 } }, metadata);
  stream.on("data", (event) => (event.event === "text" ? process.stdout.write(event.text) : console.log("\nusage", event.usage)));
  await new Promise((resolve, reject) => stream.on("end", resolve).on("error", reject));
  console.log("answer", (await unary("Ask", { memory_id, question: "What colour is Kim's bike?" })).answer);
  console.log("memory", await unary("Get", { memory_id }));
}

main().catch((err) => {
  console.error(`${grpc.status[err.code]}: ${err.details}`);
  process.exit(1);
});
