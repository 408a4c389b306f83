// A reference peer for `parley bench`: Node's `ws` (Debian `node-ws`) speaking the few frames
// of Parley's protocol that the bench uses (join with an ack, message with an ack, the
// message event with a per-room seq), with no storage, authentication or presence. It shows
// what the same load tool measures for the simplest fan-out server one can write on `ws`.
//
//   taskset -c 1 node scripts/peers/ws-peer.js 18093 &
//   taskset -c 0 .build/release/parley bench --url ws://127.0.0.1:18093/ws --server-pid $! ...
'use strict';
let WebSocketServer;
try { ({ WebSocketServer } = require('ws')); } catch { ({ WebSocketServer } = require('/usr/share/nodejs/ws')); }

const port = Number(process.argv[2] || 18093);
const rooms = new Map();
const server = new WebSocketServer({ port, host: '127.0.0.1', perMessageDeflate: false });

server.on('connection', (socket) => {
  socket.on('message', (data) => {
    let command;
    try { command = JSON.parse(data); } catch { return; }
    const name = command.data && command.data.room;
    if (typeof name !== 'string') return;
    let room = rooms.get(name);
    if (!room) { room = { seq: 0, members: new Set() }; rooms.set(name, room); }
    if (command.event === 'join') {
      room.members.add(socket);
      socket.on('close', () => room.members.delete(socket));
      socket.send(JSON.stringify({ event: 'ack', id: command.id, data: { room: name, seq: room.seq } }));
    } else if (command.event === 'message') {
      const seq = ++room.seq;
      const content = command.data.content;
      const event = JSON.stringify({ event: 'message', data: { id: `m${seq}`, room: name, seq, user: 'u', content, ts: Date.now() } });
      for (const member of room.members) member.send(event);
      socket.send(JSON.stringify({ event: 'ack', id: command.id, data: { seq, content } }));
    }
  });
});
server.on('listening', () => console.error(`ws peer listening on ${port}`));
