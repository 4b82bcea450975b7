"""How many times the event loop got to run other work while a coroutine was awaited."""

import asyncio


async def loop_turns_during(awaitable) -> tuple[object, int]:
    turns = 0
    done = False

    async def beat():
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(beat())
    await asyncio.sleep(0)
    result = await awaitable
    done = True
    await task
    return result, turns
