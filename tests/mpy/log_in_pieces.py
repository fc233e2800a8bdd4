# Virtual board test script: log lines written piece by piece, as the firmware's log() writes
# them (app.py), in an asyncio loop, while the host asks the side channel for heap samples:
# see tests/test_virtual_board.py.
import asyncio
import json
import sys

import simlink


async def main():
    simlink.link()  # the side channel, and the task that prints the heap samples
    out = sys.stdout
    n = 0
    while True:
        out.write('J {"n": ')
        json.dump(n, out)
        for _ in range(40):  # forty bytecode boundaries inside the line
            out.write(", ")
            json.dump("piece", out)
            out.write(": 1")
        out.write("}\n")
        n += 1
        await asyncio.sleep_ms(1)


asyncio.run(main())
