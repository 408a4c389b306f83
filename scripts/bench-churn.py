#!/usr/bin/env python3
"""Connection churn against a running Parley: ROUNDS rounds of PER clients that connect, then
(MODE) join a room and ping, or just ping, or do nothing, and close (half cleanly with a close
frame, half abruptly); prints the server's resident memory (read from /proc/PID) after each
round. MODE http does plain HTTP requests instead, MODE anon bare upgrades without a user.

    scripts/bench-churn.py PORT ROUNDS PER SERVER_PID MODE
"""
import asyncio, os, struct, sys
PORT=int(sys.argv[1]); ROUNDS=int(sys.argv[2]); PER=int(sys.argv[3]); PID=int(sys.argv[4]); MODE=sys.argv[5]
def frame(text):
    data=text.encode(); mask=os.urandom(4)
    head=bytes([0x81]); n=len(data)
    head+= bytes([0x80|n]) if n<126 else bytes([0x80|126])+struct.pack('>H',n)
    return head+mask+bytes(b^mask[i%4] for i,b in enumerate(data))
def close_frame():
    mask=os.urandom(4); payload=struct.pack('>H',1000)
    return bytes([0x88,0x80|2])+mask+bytes(b^mask[i%4] for i,b in enumerate(payload))
async def one(i, clean):
    r,w=await asyncio.open_connection('127.0.0.1',PORT)
    if MODE=='http':
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); await w.drain(); await r.read(1000); w.close(); return
    if MODE=='anon':
        w.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await r.readuntil(b"\r\n\r\n"); w.close(); return
    w.write(f"GET /ws?user=u{i%50} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await r.readuntil(b"\r\n\r\n")
    if MODE=='none':
        w.close(); return
    if MODE=='join': w.write(frame('{"event":"join","data":{"room":"r%d"},"id":1}' % (i%10)))
    w.write(frame('{"event":"ping","id":2}'))
    await w.drain()
    buf=b''
    while b'pong' not in buf:
        d=await r.read(4096)
        if not d: break
        buf+=d
    if clean:
        w.write(close_frame()); await w.drain()
        try: await asyncio.wait_for(r.read(100), 2)
        except Exception: pass
    w.close()
def rss():
    for line in open(f'/proc/{PID}/status'):
        if line.startswith('VmRSS'): return int(line.split()[1])
async def main():
    for rnd in range(ROUNDS):
        sem=asyncio.Semaphore(500)
        async def guarded(i):
            async with sem: await one(i, i%2==0)
        await asyncio.gather(*(guarded(i) for i in range(PER)))
        await asyncio.sleep(1)
        print(f"round {rnd+1}: rss {rss()} KiB", flush=True)
asyncio.run(main())
