// Parley's service worker: shows the pushes the server sends while Parley is closed or
// hidden (a direct message, a mention, a call), and opens the conversation when one is
// clicked. The push's JSON is described in docs/protocol.md, "Web Push".
'use strict';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

function roomName(room) {
  const dm = /^dm:([^:]+):([^:]+)$/.exec(room);
  return dm ? 'a direct message' : `#${room}`;
}

self.addEventListener('push', (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = {};
  }
  const room = typeof data.room === 'string' ? data.room : '';
  const from = typeof data.from === 'string' ? data.from : 'Someone';
  const body = typeof data.body === 'string' ? data.body : '';
  let title;
  const options = { body, data: { room }, tag: `parley-${room}`, renotify: true };
  if (data.type === 'call') {
    title = `${from} is calling`;
    options.body = data.video ? 'Video call' : 'Voice call';
    options.tag = `parley-call-${data.call || room}`;
    options.requireInteraction = true;
  } else if (data.type === 'mention') {
    title = `${from} mentioned you in ${roomName(room)}`;
  } else {
    title = from;
  }
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const room = (event.notification.data && event.notification.data.room) || '';
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const client of windows) {
      if (new URL(client.url).origin !== self.location.origin) continue;
      client.postMessage({ type: 'open-room', room });
      return client.focus();
    }
    return self.clients.openWindow(room ? `/?room=${encodeURIComponent(room)}` : '/');
  })());
});
