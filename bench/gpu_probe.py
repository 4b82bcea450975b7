"""Measurements of the CUDA path that engine_bench.py does not make, one guarded stage each.

    python bench/gpu_probe.py --shape llama3-8b --device cuda --dtype bfloat16
    python bench/gpu_probe.py --shape tiny --device cpu --dtype float32 --quick   # dry run

Stages: env (versions, GPU, attention backends), graphs (construction time, steady-state
replay tokens/s), profile (3 decode steps: top kernels, attention's share), caches (new_cache
time and memory at batch 1, 8, 32), prefill (peak memory of a 4k-token prompt; a short one's
kernel time, eager wall time and captured wall time), agreement
(bf16 vs fp32 greedy tokens, random smollm2-135m shape), memories (aggregate decode of up to
8 memories, one stream each, decoded on their own and in one batch: decode once every stream
has its first token, and with the first tokens), compiled (batch 1 with the
decode step compiled by inductor, then captured). A failing stage prints its error
and the rest still run; the exit status counts the failures.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
import traceback

import torch

from memagent.model import attention, memoryllm
from memagent.model.cuda_graph import DecodeGraphs
from memagent.model.decoding import DecodeBatch
from memagent.model.generation import stream
from memagent.model.memoryllm import MemoryLLM
from memagent.model.shapes import shape_config
from memagent.sampling import SamplingParams


class Probe:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = getattr(torch, args.dtype)
        self.config = shape_config(args.shape)
        self._model: MemoryLLM | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def free_bytes(self) -> int:
        return torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 1 << 40

    @property
    def model(self) -> MemoryLLM:
        if self._model is None:
            start = time.perf_counter()
            torch.manual_seed(0)
            self._model = MemoryLLM.from_random(self.config, device=self.device, dtype=self.dtype)
            self._model.compile_decode = self.args.compile
            self._model.inject(self.ids(self.args.write_tokens)[None])
            self.sync()
            print(f"model {self.args.shape} built and first write in {time.perf_counter() - start:.1f} s")
        return self._model

    def ids(self, n: int, batch: int | None = None) -> torch.Tensor:
        shape = (n,) if batch is None else (batch, n)
        return torch.randint(0, self.config.vocab_size, shape, device=self.device)

    # -- stages ----------------------------------------------------------------------------

    def env(self) -> None:
        print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            print(f"GPU {props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs")
            b = torch.backends.cuda
            print(f"SDPA (writes): flash {b.flash_sdp_enabled()}, mem-efficient {b.mem_efficient_sdp_enabled()}, math {b.math_sdp_enabled()}")
        print("reads: shared-prefix attention by matmul + log-sum-exp merge (memagent.model.attention)")

    def graphs(self) -> None:
        model, new = self.model, self.args.new_tokens
        for batch in (1, 2) if self.args.quick else (1, 8):
            prompt = self.ids(self.args.prompt_tokens, batch)
            params = SamplingParams(max_new_tokens=new)
            graphs = DecodeGraphs.of(model)
            captures = graphs.captures
            times = []
            for _ in range(2):
                self.sync()
                start = time.perf_counter()
                for _ in stream(model, prompt, params, []):
                    pass
                self.sync()
                times.append(time.perf_counter() - start)
            print(f"batch {batch}: first request {times[0] * 1000:.1f} ms (with {graphs.captures - captures} capture), "
                  f"second {times[1] * 1000:.1f} ms: graph construction about {(times[0] - times[1]) * 1000:.1f} ms")
            with torch.inference_mode(), graphs.borrow(model.pool, batch, self.args.prompt_tokens + new) as step:
                logits = model.lm_head(model.prefill(prompt, torch.ones_like(prompt), step.cache)[:, -1])
                token = logits.argmax(-1)[:, None]
                self.sync()
                start = time.perf_counter()
                for _ in range(new - 1):
                    token = step(token).argmax(-1)[:, None]
                self.sync()
                per_step = (time.perf_counter() - start) / (new - 1)
            kind = "graph replay" if step.graph is not None else "eager static step"
            print(f"batch {batch}: steady-state {kind} {per_step * 1000:.2f} ms/step, {batch / per_step:,.1f} tokens/s")

    def compiled(self) -> None:
        """Batch 1: the decode step compiled by inductor (its small kernels fused), captured in a
        CUDA graph like the served one. An experiment: serving does not compile."""
        model, new = self.model, self.args.new_tokens
        prompt = self.ids(self.args.prompt_tokens, 1)
        step_fn = torch.compile(model.decode_step, fullgraph=True, dynamic=False)
        graphs = DecodeGraphs(model, capture=False)
        with torch.inference_mode(), graphs.borrow(model.pool, 1, self.args.prompt_tokens + 2 * new) as step:
            cache = step.cache
            token = model.lm_head(model.prefill(prompt, torch.ones_like(prompt), cache)[:, -1]).argmax(-1)[:, None]
            self.sync()
            start = time.perf_counter()
            for _ in range(2):
                token = step_fn(token, cache).argmax(-1)[:, None]
            self.sync()
            print(f"compile and 2 steps: {time.perf_counter() - start:.1f} s")
            run = lambda: step_fn(token, cache)  # noqa: E731
            if self.device.type == "cuda":
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    logits = step_fn(token, cache)
                run = graph.replay
            self.sync()
            start = time.perf_counter()
            for _ in range(new - 4):
                run()
            self.sync()
            per_step = (time.perf_counter() - start) / (new - 4)
        print(f"batch 1: compiled step {'in a CUDA graph ' if self.device.type == 'cuda' else ''}"
              f"{per_step * 1000:.2f} ms/step, {1 / per_step:,.1f} tokens/s")

    def profile(self) -> None:
        from torch.profiler import ProfilerActivity, profile, record_function

        model = self.model
        real = memoryllm.attend

        def timed_attend(*args):
            with record_function("memagent.attention"):
                return real(*args)

        prompt = self.ids(self.args.prompt_tokens, 1)
        cache = model.new_cache(model.pool, 1, self.args.prompt_tokens + 8)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        memoryllm.attend = timed_attend
        try:
            with torch.inference_mode():
                token = model.lm_head(model.prefill(prompt, torch.ones_like(prompt), cache)[:, -1]).argmax(-1)[:, None]
                model.decode_step(token, cache)  # warm
                self.sync()
                with profile(activities=activities) as prof:
                    for _ in range(3):
                        token = model.decode_step(token, cache).argmax(-1)[:, None]
                    self.sync()
        finally:
            memoryllm.attend = real
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=20))
        events = prof.key_averages()
        time_of = (lambda e: e.device_time_total) if self.device.type == "cuda" else (lambda e: e.cpu_time_total)
        self_time = (lambda e: e.self_device_time_total) if self.device.type == "cuda" else (lambda e: e.self_cpu_time_total)
        total = sum(self_time(e) for e in events)
        share = sum(time_of(e) for e in events if e.key == "memagent.attention")
        print(f"attention share of {'GPU' if self.device.type == 'cuda' else 'CPU'} time over 3 eager steps: "
              f"{100 * share / max(total, 1):.1f}%")

    def caches(self) -> None:
        model = self.model
        for batch in (1, 8, 32):
            before = self.allocated()
            self.sync()
            start = time.perf_counter()
            cache = model.new_cache(model.pool, batch, self.args.prompt_tokens + self.args.new_tokens)
            self.sync()
            took = time.perf_counter() - start
            print(f"new_cache batch {batch}: {took * 1000:.2f} ms, {(self.allocated() - before) / 2**20:,.1f} MiB "
                  f"(token slots; the memory prefix is shared, {cache.layers[0].prefix_keys.shape[2]} tokens)")
            del cache

    def prefill(self) -> None:
        model, tokens = self.model, self.args.long_prompt
        prompt = self.ids(tokens, 1)
        cache = model.new_cache(model.pool, 1, tokens)
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        base = self.allocated()
        start = time.perf_counter()
        with torch.inference_mode():
            model.prefill(prompt, torch.ones_like(prompt), cache)
        self.sync()
        peak = torch.cuda.max_memory_allocated(self.device) - base if self.device.type == "cuda" else 0
        print(f"prefill {tokens} tokens: {(time.perf_counter() - start) * 1000:.1f} ms, "
              f"peak above the cache {peak / 2**30:.2f} GiB (chunks of {memoryllm.PREFILL_QUERY_ROWS} query rows)")
        if self.device.type == "cuda":  # a short prompt: is its prefill bound by the device or by launches?
            from torch.profiler import ProfilerActivity, profile

            prompt = self.ids(self.args.prompt_tokens, 1)
            cache = model.new_cache(model.pool, 1, self.args.prompt_tokens)
            with torch.inference_mode():
                model.prefill(prompt, torch.ones_like(prompt), cache)
                self.sync()
                start = time.perf_counter()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    model.prefill(prompt, torch.ones_like(prompt), cache)
                    self.sync()
            busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1000
            print(f"prefill {self.args.prompt_tokens} tokens: {(time.perf_counter() - start) * 1000:.1f} ms wall "
                  f"(profiled), of which kernels ran {busy:.1f} ms")
            graphs = DecodeGraphs.of(model)
            with torch.inference_mode(), graphs.borrow(model.pool, 1, 2 * self.args.prompt_tokens) as step:
                step.prefill(prompt, torch.ones_like(prompt))  # captured on first use
                times = []
                for _ in range(5):
                    self.sync()
                    start = time.perf_counter()
                    step.prefill(prompt, torch.ones_like(prompt)).argmax(-1).item()
                    times.append(time.perf_counter() - start)
            print(f"prefill {self.args.prompt_tokens} tokens in a captured graph (StaticPrefill), to its first "
                  f"token on the host: median {sorted(times)[2] * 1000:.1f} ms of 5")

    def agreement(self) -> None:
        shape = "tiny" if self.args.quick else "smollm2-135m"
        config = shape_config(shape)
        rows, new = (2, 8) if self.args.quick else (8, 32)
        outputs = {}
        for dtype in (torch.float32, self.dtype if self.dtype != torch.float32 else torch.bfloat16):
            model = MemoryLLM.from_random(config, seed=0, device=self.device, dtype=dtype)
            torch.manual_seed(1)
            model.inject(torch.randint(0, config.vocab_size, (1, 256), device=self.device))
            prompts = torch.randint(0, config.vocab_size, (rows, 32), generator=torch.Generator().manual_seed(2)).to(self.device)
            outputs[dtype] = model.generate(prompts, max_new_tokens=new, eos_token_id=[]).cpu()
        full, half = outputs.values()
        same = (full == half).float().mean().item()
        prefix = (full == half).int().cumprod(1).sum(1).float().mean().item()
        print(f"greedy, random {shape}, {rows} prompts x {new} tokens: {100 * same:.1f}% of tokens agree between fp32 and "
              f"{str(list(outputs)[1]).removeprefix('torch.')}; identical for the first {prefix:.1f} tokens on average")

    def memories(self) -> None:
        model, new = self.model, self.args.new_tokens
        per_memory = model.pool.nbytes + model.pool.memory.nbytes  # pool, its prefix K/V, a step's copy
        count = max(1, min(2 if self.args.quick else 8, int(0.8 * self.free_bytes() // max(per_memory, 1))))
        pools = [model.pool] + [model.new_pool(seed=i) for i in range(1, count)]
        for pool in pools[1:]:
            model.inject(self.ids(self.args.write_tokens)[None], pool=pool)
        params = SamplingParams(max_new_tokens=new)
        prompt = self.ids(self.args.prompt_tokens, 1)
        graphs = DecodeGraphs.of(model)
        for how, batched, graphed in [("each decoded on its own", False, True),
                                      ("decoded in one batch, eagerly", True, False),
                                      ("decoded in one batch", True, True)]:
            captures = graphs.captures
            for _ in range(2):
                # Batched: one DecodeBatch, as an engine runs them; otherwise each stream alone.
                batches = [DecodeBatch(model, contextlib.nullcontext())] * count if batched else [
                    DecodeBatch(model, contextlib.nullcontext()) for _ in pools]
                decoded: list[int] = []  # each decode step's rows: tokens decoded
                for batch in set(batches):
                    batch.on_step = decoded.append
                streams = [stream(model, prompt, params, [], pool=pool, batch=batch, cuda_graph=graphed)
                           for pool, batch in zip(pools, batches)]
                self.sync()
                start = time.perf_counter()
                for s in streams:  # each stream's prefill and first token (the first ones decode meanwhile)
                    next(s)
                self.sync()
                first, before = time.perf_counter(), len(decoded)
                for _ in range(new - 1):
                    for s in streams:
                        next(s)
                self.sync()
                end = time.perf_counter()
            lanes = sum(lane.step is not None for lane in graphs.lanes.values())
            print(f"{count} memories, one batch-1 stream each, {how}: {sum(decoded[before:]) / (end - first):,.1f} "
                  f"tokens/s aggregate decode once every stream has its first token ({(first - start) * 1000:.0f} ms "
                  f"for the {count} first tokens, {count * new / (end - start):,.1f} tokens/s with them; second round; "
                  f"{graphs.captures - captures} decode graphs captured; steps over several memories: "
                  f"{lanes} of a lane, {len(graphs.joint)} of other sets)")
        lane = next(iter(graphs.lanes.values()), None)
        if lane is not None and lane.step is not None:  # how much of a lane step is the device's?
            from torch.profiler import ProfilerActivity, profile

            rows, tokens = tuple(range(count)), torch.zeros(count, 1, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                lane.decode(rows, tokens)
                self.sync()
                start = time.perf_counter()
                for _ in range(20):
                    lane.decode(rows, tokens)
                self.sync()
                per_step = (time.perf_counter() - start) / 20
                print(f"the lane's step over {count} rows, replayed alone: {per_step * 1000:.2f} ms, "
                      f"{count / per_step:,.0f} tokens/s")
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    lane.step._step()
                    self.sync()
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8))


STAGES = ["env", "graphs", "profile", "caches", "prefill", "agreement", "memories", "compiled"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--quick", action="store_true", help="small counts for a CPU dry run")
    parser.add_argument(
        "--compile", action="store_true", help="compile one-row decode steps (MemoryLLM.compile_decode)"
    )
    args = parser.parse_args()
    args.write_tokens = 32 if args.quick else 512
    args.prompt_tokens = 8 if args.quick else 64
    args.new_tokens = 9 if args.quick else 64
    args.long_prompt = 300 if args.quick else 4096
    probe = Probe(args)
    failures = 0
    for name in args.stages.split(","):
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            getattr(probe, name)()
        except Exception:  # noqa: BLE001 - one failed stage must not stop the others
            failures += 1
            traceback.print_exc(file=sys.stdout)
            if probe.device.type == "cuda":
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize()
        print(f"({name}: {time.perf_counter() - start:.1f} s)", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())
