// node dist/demo.js [memory-id]: create a memory, write into it, stream a continuation, ask, list
// entries, get its size; prints JSON lines. Reads $MEMAGENT_SERVER and $MEMAGENT_TOKEN.
import { MemAgentClient } from "./index";

async function main(): Promise<void> {
  const client = new MemAgentClient({ timeout: 60 });
  const memory = process.argv[2] ?? `ts-${Date.now()}`;
  try {
    await client.create(memory);
    const receipt = await client.inject(memory, "Kim's bike is blue.", "typescript", { run_id: "demo" });
    console.log(JSON.stringify({ receipt }));
    const generation = client.generate(memory, "Kim's bike is", { max_new_tokens: 8 });
    const text = await generation.text();
    console.log(JSON.stringify({ text, usage: generation.usage }));
    const { answer, abstained } = await client.askWithUsage(memory, "What colour is Kim's bike?");
    console.log(JSON.stringify({ answer, abstained }));
    console.log(JSON.stringify({ entries: (await client.entries(memory)).map((e) => [e.text, e.source, e.metadata]) }));
    const { step, long_term_tokens } = await client.get(memory);
    console.log(JSON.stringify({ memory: { step, long_term_tokens } }));
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.error(String(err));
  process.exit(1);
});
