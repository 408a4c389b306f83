/*
 * Parley web client: vanilla JavaScript, no dependencies, no build step.
 * Speaks the Parley WebSocket protocol, version 1 (see docs/protocol.md).
 *
 * Safety rule for this file: user content (names, rooms, messages) only ever
 * reaches the page through textContent / createTextNode, never innerHTML.
 */
(() => {
  'use strict';

  // ---------------------------------------------------------------------------
  // Constants and small helpers
  // ---------------------------------------------------------------------------

  const USER_RE = /^[A-Za-z0-9_.-]{1,32}$/;
  const ROOM_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
  const DM_PREFIX = 'dm:';

  /** The direct-message room of two users: `dm:<a>:<b>`, the ids in ascending order. */
  function dmRoom(a, b) {
    return a < b ? `${DM_PREFIX}${a}:${b}` : `${DM_PREFIX}${b}:${a}`;
  }

  /** The other user of a DM room, or null when `name` is not one of ours. */
  function dmPartner(name) {
    if (!name.startsWith(DM_PREFIX)) return null;
    const [a, b, extra] = name.slice(DM_PREFIX.length).split(':');
    if (extra !== undefined || !USER_RE.test(a || '') || !USER_RE.test(b || '') || dmRoom(a, b) !== name) return null;
    if (a === app.user) return b;
    return b === app.user ? a : null;
  }

  function isRoomName(name) {
    return typeof name === 'string' && (name.startsWith(DM_PREFIX) ? dmPartner(name) !== null : ROOM_RE.test(name));
  }

  /** How a room is named on screen: `#general`, or `@bob` for a DM. */
  function roomLabel(name) {
    const partner = dmPartner(name);
    return partner === null ? `#${name}` : `@${partner}`;
  }
  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/g;
  const MAX_CONTENT = 4000;
  const COUNTER_FROM = 3500;
  const REQUEST_TIMEOUT_MS = 10000;
  const BACKOFF_START_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const STABLE_AFTER_MS = 10000; // a connection that stays up this long resets the backoff
  const PING_EVERY_MS = 25000;
  const TYPING_RENEW_MS = 3000;
  const TYPING_IDLE_MS = 5000;
  const TYPING_EXPIRE_MS = 6000; // safety net: the server itself expires typing after 5 s
  const HISTORY_PAGE = 50;
  const GAP_PAGE = 100;
  const MAX_NOTICES = 200;
  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  const NEAR_BOTTOM_PX = 80;
  const NEAR_TOP_PX = 80;
  const ALERT_QUIET_MS = 1500;
  const CHANGE_KINDS = new Set(['edit', 'delete', 'react', 'unreact']);
  const MODERATION_KINDS = new Set(['kick', 'mute', 'unmute', 'ban', 'unban']);
  const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢', '🙏', '👀'];
  const MENTION_RE = /(^|[^A-Za-z0-9_.-])@([A-Za-z0-9_.-]*[A-Za-z0-9_-])/g;
  const SEARCH_PAGE = 20;
  const MAX_ATTACHMENTS = 10;
  const HOLD_TO_RECORD_MS = 400; // held longer, the microphone records until it is let go
  const INLINE_IMAGES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);

  const $ = (id) => document.getElementById(id);
  const ignore = () => {};
  const codePoints = (text) => Array.from(text).length;
  const collator = new Intl.Collator(undefined, { sensitivity: 'base', numeric: true });
  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
  const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function listText(names) {
    if (names.length <= 1) return names.join('');
    return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
  }

  function randomHex(bytes) {
    const values = crypto.getRandomValues(new Uint8Array(bytes));
    return Array.from(values, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function newClientId() {
    return `c-${Date.now().toString(36)}-${randomHex(6)}`;
  }

  // ---------------------------------------------------------------------------
  // Persistence (localStorage, namespaced; failures fall back to memory)
  // ---------------------------------------------------------------------------

  const storage = {
    get(key, fallback) {
      try {
        const raw = localStorage.getItem(`parley.${key}`);
        return raw === null ? fallback : JSON.parse(raw);
      } catch {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem(`parley.${key}`, JSON.stringify(value));
      } catch {
        // Storage full or disabled: the app keeps working, it just forgets on reload.
      }
    },
    remove(key) {
      try {
        localStorage.removeItem(`parley.${key}`);
      } catch {
        // Same as above.
      }
    },
  };

  function saveRooms() {
    storage.set('rooms', [...app.rooms.keys()]);
    storage.set('currentRoom', app.currentRoom);
  }

  function saveOutbox() {
    const items = [];
    for (const room of app.rooms.values()) {
      for (const item of room.outbox) {
        items.push({ room: item.room, content: item.content, clientId: item.clientId, replyTo: item.replyTo || null, attachments: item.attachments || [] });
      }
    }
    storage.set('outbox', { user: app.user, items });
  }

  function restoreOutbox() {
    const saved = storage.get('outbox', null);
    if (!saved || saved.user !== app.user || !Array.isArray(saved.items)) return;
    for (const item of saved.items) {
      const room = app.rooms.get(item.room);
      if (room && typeof item.content === 'string' && typeof item.clientId === 'string') {
        const replyTo = typeof item.replyTo === 'string' ? item.replyTo : null;
        const attachments = Array.isArray(item.attachments) ? item.attachments.filter((id) => typeof id === 'string') : [];
        room.outbox.push(makeOutgoing(room.name, item.content, item.clientId, replyTo, attachments));
      }
    }
  }

  // ---------------------------------------------------------------------------
  // Application state
  // ---------------------------------------------------------------------------

  const app = {
    user: null,
    token: null,
    roles: [], // the token's `roles` claim: `moderator` shows the moderation actions
    connection: 'offline',
    currentRoom: null,
    rooms: new Map(), // name -> room state, in sidebar order
    settings: { notify: true, sound: true },
  };

  function makeRoom(name) {
    return {
      name,
      messages: [], // every row, sorted by seq, no duplicates: messages, changes, moderation
      seqs: new Set(),
      byId: new Map(), // message id -> message (its current state)
      lastSeq: 0, // highest seq received from the room's stream or history: the resume point
      synced: false, // true once the latest history page is loaded; then `since` can resume
      hasOlder: false,
      loadingOlder: false,
      fillingGap: false,
      joined: false,
      joining: false,
      error: null,
      unread: 0,
      presence: new Map(), // user -> since (one page of a large room)
      online: 0, // users in the room, listed or not
      typing: new Map(), // user -> expiry timer
      reads: new Map(), // user -> latest read seq
      readSent: 0,
      notices: [], // {afterSeq, time, node}
      outbox: [], // outgoing messages not yet acknowledged
      sending: false,
      prepended: false,
      renderedSeq: 0,
      nodes: new Map(), // seq -> message element
      seenNodes: new Map(), // seq -> seen-by element
      dayNodes: new Map(), // day key -> separator element
      listNode: null,
      historyNode: null,
      emptyNode: null,
    };
  }

  function currentRoom() {
    return app.currentRoom ? app.rooms.get(app.currentRoom) || null : null;
  }

  function isRoomInView(room) {
    return room.name === app.currentRoom && document.visibilityState === 'visible';
  }

  function isValidMessage(msg) {
    return Boolean(msg) && Number.isInteger(msg.seq) && typeof msg.user === 'string' && typeof msg.content === 'string';
  }

  // ---------------------------------------------------------------------------
  // Connection: one WebSocket, exponential backoff with jitter, heartbeat
  // ---------------------------------------------------------------------------

  const conn = {
    socket: null,
    wanted: false, // false once signed out: no reconnection
    lost: false, // the connection dropped and has not come back yet
    attempt: 0,
    retryAt: 0,
    retryTimer: null,
    countdownTimer: null,
    openTimer: null,
    stableTimer: null,
    pingTimer: null,
  };

  function socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = app.token ? `token=${encodeURIComponent(app.token)}` : `user=${encodeURIComponent(app.user)}`;
    return `${scheme}//${location.host}/ws?${query}`;
  }

  function connect() {
    clearReconnectTimers();
    if (conn.socket) return;
    conn.wanted = true;
    if (navigator.onLine === false) {
      setConnection('offline');
      return;
    }
    setConnection('connecting');
    let socket;
    try {
      socket = new WebSocket(socketUrl());
    } catch {
      scheduleReconnect('invalid url');
      return;
    }
    conn.socket = socket;
    conn.openTimer = setTimeout(() => dropSocket(4000, 'connect timeout'), REQUEST_TIMEOUT_MS);
    socket.onopen = () => {
      if (conn.socket === socket) onSocketOpen();
    };
    socket.onmessage = (event) => {
      if (conn.socket === socket) onFrame(event.data);
    };
    socket.onclose = (event) => {
      if (conn.socket === socket) onSocketClosed(event.code, event.reason);
    };
  }

  function onSocketOpen() {
    clearTimeout(conn.openTimer);
    setConnection('online');
    conn.stableTimer = setTimeout(() => { conn.attempt = 0; }, STABLE_AFTER_MS);
    conn.pingTimer = setInterval(heartbeat, PING_EVERY_MS);
    for (const room of app.rooms.values()) joinOnServer(room);
    for (const room of app.rooms.values()) flushOutbox(room);
    syncInbox();
    conn.reportedVisible = null;
    reportVisibility();
  }

  /** Tells the server whether this tab is in front: while one is, no push is sent. */
  function reportVisibility() {
    const visible = document.visibilityState === 'visible';
    if (!isOnline() || conn.reportedVisible === visible) return;
    conn.reportedVisible = visible;
    request('visibility', { visible }).catch(() => { conn.reportedVisible = null; });
  }

  function onSocketClosed(code, reason) {
    conn.socket = null;
    clearTimeout(conn.openTimer);
    clearTimeout(conn.stableTimer);
    clearInterval(conn.pingTimer);
    failPendingRequests();
    for (const room of app.rooms.values()) resetLiveState(room);
    if (code === 1008 || code === 1009) {
      toast(`The server closed the connection${reason ? ` (${reason})` : ''}. Reconnecting…`);
    }
    if (!conn.wanted || navigator.onLine === false) {
      setConnection('offline');
      return;
    }
    scheduleReconnect(code);
  }

  /** Closes the socket now and handles the close at once, without waiting for the handshake. */
  function dropSocket(code, reason) {
    const socket = conn.socket;
    if (!socket) return;
    socket.onclose = null;
    socket.close(code, reason);
    onSocketClosed(code, '');
  }

  function scheduleReconnect(why) {
    const base = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * 2 ** conn.attempt);
    const delay = Math.round(Math.min(BACKOFF_CAP_MS, base * (0.75 + Math.random() * 0.5)));
    conn.attempt += 1;
    conn.retryAt = Date.now() + delay;
    console.debug(`parley: connection closed (${why}), reconnecting in ${delay} ms`);
    conn.retryTimer = setTimeout(connect, delay);
    conn.countdownTimer = setInterval(renderConnection, 250);
    setConnection('reconnecting');
  }

  function clearReconnectTimers() {
    clearTimeout(conn.retryTimer);
    clearInterval(conn.countdownTimer);
  }

  function heartbeat() {
    request('ping', {}).catch((err) => {
      if (err.code === 'timeout') dropSocket(4000, 'heartbeat timeout');
    });
  }

  function isOnline() {
    return Boolean(conn.socket) && conn.socket.readyState === WebSocket.OPEN && app.connection === 'online';
  }

  function setConnection(state) {
    const previous = app.connection;
    app.connection = state;
    renderConnection();
    if (previous === 'online' && state !== 'online' && conn.wanted) {
      conn.lost = true;
      announce('Connection lost. Reconnecting.');
    } else if (state === 'online' && conn.lost) {
      conn.lost = false;
      announce('Back online.');
    }
  }

  function onBrowserOffline() {
    if (conn.socket) {
      dropSocket(4000, 'browser offline');
    } else if (conn.wanted) {
      clearReconnectTimers();
      setConnection('offline');
    }
  }

  function onBrowserOnline() {
    if (conn.wanted && !conn.socket) {
      conn.attempt = 0;
      connect();
    }
  }

  // ---------------------------------------------------------------------------
  // Protocol requests: {event, data, id} answered by exactly one ack or error
  // ---------------------------------------------------------------------------

  const pending = new Map(); // id -> {resolve, reject, timer}
  let nextRequestId = 1;

  function protocolError(code, message, data) {
    const error = new Error(message || code);
    error.code = code;
    error.data = data || {};
    return error;
  }

  function request(event, data) {
    return new Promise((resolve, reject) => {
      const socket = conn.socket;
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        reject(protocolError('offline', 'Not connected'));
        return;
      }
      const id = nextRequestId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(protocolError('timeout', `No answer to ${event}`));
      }, REQUEST_TIMEOUT_MS);
      pending.set(id, { resolve, reject, timer });
      socket.send(JSON.stringify({ event, data, id }));
    });
  }

  function settleRequest(frame) {
    const entry = pending.get(frame.id);
    if (!entry) return;
    pending.delete(frame.id);
    clearTimeout(entry.timer);
    const data = frame.data || {};
    if (frame.event === 'error') entry.reject(protocolError(data.code || 'error', data.message, data));
    else entry.resolve(data);
  }

  function failPendingRequests() {
    for (const entry of pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(protocolError('disconnected', 'Connection lost'));
    }
    pending.clear();
  }

  const serverEvents = {
    message: onMessageEvent,
    join: onJoinEvent,
    leave: onLeaveEvent,
    presence: onPresenceUpdate,
    typing: onTypingEvent,
    read: onReadEvent,
    notify: onNotifyEvent,
    call: onCallEvent,
    error: (data) => toast(data.message || data.code || 'Server error'),
  };

  function onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame.event !== 'string') return;
    const answersRequest = frame.id !== undefined && frame.id !== null;
    if (answersRequest && (frame.event === 'ack' || frame.event === 'error' || frame.event === 'pong')) {
      settleRequest(frame);
      return;
    }
    const handler = serverEvents[frame.event];
    if (handler && frame.data && typeof frame.data === 'object') handler(frame.data);
  }

  // ---------------------------------------------------------------------------
  // Rooms state: join, resume, history, leave, switch
  // ---------------------------------------------------------------------------

  function addRoom(name) {
    let room = app.rooms.get(name);
    if (!room) {
      room = makeRoom(name);
      app.rooms.set(name, room);
      saveRooms();
      joinOnServer(room);
    }
    return room;
  }

  function joinOnServer(room) {
    if (!isOnline() || room.joining || room.joined) return;
    room.joining = true;
    const data = { room: room.name };
    if (room.synced) data.since = room.lastSeq;
    request('join', data).then((ack) => onJoined(room, ack), (err) => onJoinFailed(room, err));
  }

  function onJoined(room, ack) {
    room.joining = false;
    if (app.rooms.get(room.name) !== room) {
      request('leave', { room: room.name }).catch(ignore);
      return;
    }
    room.joined = true;
    room.error = null;
    const users = Array.isArray(ack.users) ? ack.users : [];
    room.presence = new Map(users.filter((p) => p && typeof p.user === 'string').map((p) => [p.user, p.since]));
    // A large room lists one page of its users and says how many there are.
    room.online = Number.isInteger(ack.online) ? ack.online : room.presence.size;
    if (!room.synced) loadLatest(room);
    scheduleRender();
  }

  function onJoinFailed(room, err) {
    room.joining = false;
    if (err.code === 'offline' || err.code === 'disconnected') return; // rejoined on reconnect
    if (err.code === 'timeout') {
      setTimeout(() => joinOnServer(room), 1000);
      return;
    }
    room.error = `Could not join: ${err.message}`;
    scheduleRender();
  }

  function resetLiveState(room) {
    room.joined = false;
    room.joining = false;
    for (const timer of room.typing.values()) clearTimeout(timer);
    room.typing.clear();
  }

  function addMessage(room, msg) {
    if (!isValidMessage(msg) || room.seqs.has(msg.seq)) return false;
    room.seqs.add(msg.seq);
    if (!msg.kind) {
      if (!Number.isInteger(msg.stateSeq)) msg.stateSeq = msg.seq;
      msg.version = 0;
      room.byId.set(msg.id, msg);
    } else if (CHANGE_KINDS.has(msg.kind)) {
      applyChange(room, msg);
    }
    const list = room.messages;
    if (!list.length || list[list.length - 1].seq < msg.seq) {
      list.push(msg);
    } else {
      let lo = 0;
      let hi = list.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (list[mid].seq < msg.seq) lo = mid + 1;
        else hi = mid;
      }
      list.splice(lo, 0, msg);
    }
    if (msg.user === app.user && msg.clientId) settleOutgoing(room, msg.clientId);
    return true;
  }

  /** Adds a page from `history`; pages of the latest or newer messages also move the resume point. */
  function addPage(room, page, { newer }) {
    const messages = Array.isArray(page.messages) ? page.messages.filter(isValidMessage) : [];
    // Each message is in its state as of the page's reading, which includes every row of the
    // page: only later changes apply to it.
    const newest = messages.reduce((max, msg) => Math.max(max, msg.seq), 0);
    for (const msg of messages) if (!msg.kind) msg.stateSeq = newest;
    for (const msg of messages) {
      addMessage(room, msg);
      if (newer) room.lastSeq = Math.max(room.lastSeq, msg.seq);
    }
    return messages;
  }

  function loadLatest(room) {
    request('history', { room: room.name, limit: HISTORY_PAGE }).then((page) => {
      addPage(room, page, { newer: true });
      room.hasOlder = Boolean(page.hasMore);
      room.synced = true;
      scheduleRender();
    }, () => {
      if (room.joined) setTimeout(() => loadLatest(room), 2000);
    });
  }

  function loadOlder(room) {
    if (!room.hasOlder || room.loadingOlder || !room.messages.length || !isOnline()) return;
    room.loadingOlder = true;
    request('history', { room: room.name, before: room.messages[0].seq, limit: HISTORY_PAGE })
      .then((page) => {
        addPage(room, page, { newer: false });
        room.hasOlder = Boolean(page.hasMore);
        room.prepended = true;
      }, ignore)
      .finally(() => {
        room.loadingOlder = false;
        scheduleRender();
      });
    scheduleRender();
  }

  /** Defensive: the server promises no gaps, but if one shows up, fetch what is missing. */
  function fillGap(room, after) {
    if (room.fillingGap) return;
    room.fillingGap = true;
    request('history', { room: room.name, after, limit: GAP_PAGE }).then((page) => {
      const messages = addPage(room, page, { newer: true });
      room.fillingGap = false;
      if (page.hasMore && messages.length) fillGap(room, messages[messages.length - 1].seq);
      scheduleRender();
    }, () => { room.fillingGap = false; });
  }

  function joinRoomByName(raw) {
    const text = raw.trim();
    if (text.startsWith('@')) {
      const user = text.slice(1);
      if (!USER_RE.test(user)) return 'A direct message names a user: @ then 1 to 32 letters, digits, dot, underscore or hyphen.';
      const dm = dmRoom(app.user, user);
      addRoom(dm);
      switchRoom(dm);
      return '';
    }
    const name = text.replace(/^#/, '');
    if (!ROOM_RE.test(name)) {
      return 'Room names are 1 to 64 characters: letters, digits, dot (.), underscore (_), colon (:) or hyphen (-). No spaces.';
    }
    addRoom(name);
    switchRoom(name);
    return '';
  }

  function leaveRoom(name) {
    const room = app.rooms.get(name);
    if (!room) return;
    if (typingOut.room === name) stopTyping();
    resetLiveState(room);
    const names = [...app.rooms.keys()];
    const index = names.indexOf(name);
    app.rooms.delete(name);
    if (isOnline()) request('leave', { room: name }).catch(ignore);
    if (app.currentRoom === name) {
      const rest = names.filter((n) => n !== name);
      app.currentRoom = rest[Math.min(index, rest.length - 1)] || null;
    }
    saveRooms();
    saveOutbox();
    announce(`Left ${name}.`);
    scheduleRender({ toBottom: true });
  }

  function switchRoom(name) {
    if (!app.rooms.has(name)) return;
    if (app.currentRoom !== name && typingOut.active) stopTyping();
    app.currentRoom = name;
    app.rooms.get(name).unread = 0;
    saveRooms();
    setSidebarOpen(false);
    scheduleRender({ toBottom: true });
  }

  function switchRoomBy(step) {
    const names = [...app.rooms.keys()];
    if (!names.length) return;
    const index = names.indexOf(app.currentRoom);
    const next = names[(index + step + names.length) % names.length];
    switchRoom(next);
    announce(`Room ${next}.`);
  }

  // ---------------------------------------------------------------------------
  // Server events: messages, presence (join / leave)
  // ---------------------------------------------------------------------------

  function onMessageEvent(msg) {
    const room = app.rooms.get(msg.room);
    if (!room || !isValidMessage(msg)) return;
    const gapAfter = room.synced && msg.seq > room.lastSeq + 1 ? room.lastSeq : null;
    room.lastSeq = Math.max(room.lastSeq, msg.seq);
    const added = addMessage(room, msg);
    if (gapAfter !== null) fillGap(room, gapAfter);
    if (!added) return;
    if (msg.kind) {
      if (MODERATION_KINDS.has(msg.kind)) onModeration(room, msg);
      scheduleRender();
      return;
    }
    clearTypingOf(room, msg.user);
    if (msg.user !== app.user) onNewFromOthers(room, msg);
    scheduleRender();
  }

  // ---------------------------------------------------------------------------
  // Changes: edits, deletions, reactions; moderation
  // ---------------------------------------------------------------------------

  /** Applies a change row to the message it targets, unless that message already shows it. */
  function applyChange(room, row) {
    const target = room.byId.get(row.target);
    if (!target || row.seq <= target.stateSeq) return;
    target.stateSeq = row.seq;
    target.version += 1;
    const reactions = Array.isArray(target.reactions) ? target.reactions : [];
    switch (row.kind) {
      case 'edit':
        target.content = row.content;
        target.edited = row.timestamp;
        for (const other of room.byId.values()) {
          if (other.quote && other.quote.id === target.id) {
            other.quote = { ...other.quote, content: row.content.slice(0, 140) };
            other.version += 1;
          }
        }
        break;
      case 'delete':
        target.content = '';
        target.deleted = true;
        target.reactions = [];
        for (const other of room.byId.values()) {
          if (other.quote && other.quote.id === target.id) {
            other.quote = { ...other.quote, content: '', deleted: true };
            other.version += 1;
          }
        }
        break;
      case 'react': {
        const entry = reactions.find((r) => r.emoji === row.content);
        if (entry) {
          if (!entry.users.includes(row.user)) entry.users.push(row.user);
        } else {
          reactions.push({ emoji: row.content, users: [row.user] });
        }
        target.reactions = reactions;
        break;
      }
      case 'unreact': {
        const entry = reactions.find((r) => r.emoji === row.content);
        if (entry) entry.users = entry.users.filter((user) => user !== row.user);
        target.reactions = reactions.filter((r) => r.users.length);
        break;
      }
      default:
        break;
    }
  }

  /** The sentence a moderation row shows in the timeline. */
  function moderationText(row) {
    const who = row.target === app.user ? 'you' : row.target;
    const until = row.until ? ` until ${fullFormat.format(new Date(row.until))}` : '';
    const verb = {
      kick: `removed ${who} from the room`,
      mute: `muted ${who}${until}`,
      unmute: `unmuted ${who}`,
      ban: `banned ${who}${until}`,
      unban: `lifted the ban on ${who}`,
    }[row.kind] || row.kind;
    return `${row.user} ${verb}${row.content ? `: ${row.content}` : ''}`;
  }

  /** A kick or ban of us takes the room out of our joined rooms (the server did so). */
  function onModeration(room, row) {
    if (row.target !== app.user) return;
    if (row.kind === 'kick' || row.kind === 'ban') {
      resetLiveState(room);
      room.error = row.kind === 'ban' ? 'You were banned from this room.' : 'You were removed from this room. Join it again to come back.';
    }
    toast(moderationText(row));
  }

  function isModerator() {
    return Boolean(app.roles && app.roles.includes('moderator'));
  }

  function changeMessage(room, event, data) {
    return request(event, { room: room.name, ...data }).then((current) => {
      const target = room.byId.get(current.id);
      if (target && isValidMessage(current)) {
        Object.assign(target, current, { stateSeq: target.stateSeq, version: target.version + 1 });
      }
      scheduleRender();
      return current;
    }, (err) => {
      toast(err && err.message ? err.message : 'That did not work.');
      throw err;
    });
  }

  function toggleReaction(room, msg, emoji) {
    const mine = (msg.reactions || []).some((r) => r.emoji === emoji && r.users.includes(app.user));
    changeMessage(room, 'react', { id: msg.id, emoji, add: !mine }).catch(ignore);
  }

  function startReply(room, msg) {
    ui.replyTo = { room: room.name, id: msg.id, user: msg.user, content: msg.content };
    renderReplyBar();
    $('composer-input').focus();
  }

  function cancelReply() {
    ui.replyTo = null;
    renderReplyBar();
  }

  function renderReplyBar() {
    const bar = $('reply-bar');
    const reply = ui.replyTo && ui.replyTo.room === app.currentRoom ? ui.replyTo : null;
    bar.hidden = !reply;
    if (reply) {
      $('reply-to-user').textContent = reply.user;
      $('reply-to-text').textContent = reply.content.slice(0, 140);
    }
  }

  function startEdit(room, msg) {
    ui.editing = { room: room.name, id: msg.id };
    const node = room.nodes.get(msg.seq);
    if (node) node.dataset.version = '';
    scheduleRender();
  }

  function finishEdit(room, msg, text) {
    ui.editing = null;
    const content = text.trim();
    if (content && content !== msg.content) changeMessage(room, 'edit', { id: msg.id, content }).catch(ignore);
    msg.version += 1;
    scheduleRender();
  }

  function moderate(room, user, action, seconds) {
    const data = { room: room.name, user, action };
    if (seconds) data.seconds = seconds;
    request('moderate', data).then(() => toast(`Done: ${action} ${user}.`), (err) => toast(err.message || 'That did not work.'));
  }

  function onNewFromOthers(room, msg) {
    if (!isRoomInView(room)) room.unread += 1;
    if (room.name === app.currentRoom) announce(`${msg.user}: ${msg.content}`);
    if (document.visibilityState === 'hidden' && shouldAlert(room, msg)) alertNewMessage(room, msg);
  }

  /** The rule of pushes, in the page too: a direct message or a mention, in a room not muted. */
  function shouldAlert(room, msg) {
    if (push.muteAll || push.muted.has(room.name)) return false;
    return dmPartner(room.name) !== null || (Array.isArray(msg.mentions) && msg.mentions.includes(app.user));
  }

  function onJoinEvent(data) {
    const room = app.rooms.get(data.room);
    if (!room || typeof data.user !== 'string' || room.presence.has(data.user)) return;
    room.presence.set(data.user, data.timestamp);
    room.online = Math.max(room.online + 1, room.presence.size);
    if (data.user !== app.user) addNotice(room, `${data.user} joined`, data.timestamp);
    scheduleRender();
  }

  function onLeaveEvent(data) {
    const room = app.rooms.get(data.room);
    if (!room || typeof data.user !== 'string' || !room.presence.has(data.user)) return;
    room.presence.delete(data.user);
    room.online = Math.max(room.online - 1, room.presence.size);
    clearTypingOf(room, data.user);
    if (data.user !== app.user) addNotice(room, `${data.user} left`, data.timestamp);
    scheduleRender();
  }

  /** A large room's joins and leaves of the last second, with its new head count. */
  function onPresenceUpdate(data) {
    const room = app.rooms.get(data.room);
    if (!room || !Number.isInteger(data.online)) return;
    const names = (list) => (Array.isArray(list) ? list.filter((user) => typeof user === 'string') : []);
    const joined = names(data.joined).filter((user) => user !== app.user);
    const left = names(data.left).filter((user) => user !== app.user);
    for (const user of names(data.joined)) if (!room.presence.has(user)) room.presence.set(user, new Date().toISOString());
    for (const user of left) {
      room.presence.delete(user);
      clearTypingOf(room, user);
    }
    room.online = Math.max(data.online, room.presence.size);
    if (joined.length) addNotice(room, `${listText(joined.slice(0, 3))}${joined.length > 3 ? ' and others' : ''} joined`);
    if (left.length) addNotice(room, `${listText(left.slice(0, 3))}${left.length > 3 ? ' and others' : ''} left`);
    scheduleRender();
  }

  function addNotice(room, text, timestamp) {
    const node = make('li', 'notice', text);
    node.dataset.room = room.name;
    const time = Date.parse(timestamp);
    room.notices.push({ afterSeq: room.lastSeq, time: Number.isNaN(time) ? Date.now() : time, node });
    if (room.notices.length > MAX_NOTICES) room.notices.shift();
  }

  // ---------------------------------------------------------------------------
  // Outgoing messages: an outbox per room, retried with the same clientId
  // ---------------------------------------------------------------------------

  function makeOutgoing(roomName, content, clientId, replyTo = null, attachments = []) {
    return { room: roomName, content, clientId, replyTo, attachments, failed: null, node: null };
  }

  function sendMessage(room, content) {
    const replyTo = ui.replyTo && ui.replyTo.room === room.name ? ui.replyTo.id : null;
    ui.replyTo = null;
    const files = ui.uploads.filter((upload) => upload.room === room.name && upload.attachment);
    ui.uploads = ui.uploads.filter((upload) => !files.includes(upload));
    room.outbox.push(makeOutgoing(room.name, content, newClientId(), replyTo, files.map((upload) => upload.attachment.id)));
    renderUploads();
    saveOutbox();
    flushOutbox(room);
    scheduleRender({ toBottom: true });
  }

  /** Sends the room's oldest waiting message; one in flight per room keeps the order. */
  function flushOutbox(room) {
    if (room.sending || !isOnline() || app.rooms.get(room.name) !== room) return;
    const item = room.outbox.find((entry) => !entry.failed);
    if (!item) return;
    room.sending = true;
    const data = { room: item.room, content: item.content, clientId: item.clientId };
    if (item.replyTo) data.replyTo = item.replyTo;
    if (item.attachments && item.attachments.length) data.attachments = item.attachments;
    request('message', data).then((msg) => {
      room.sending = false;
      addMessage(room, msg);
      settleOutgoing(room, item.clientId);
      scheduleRender();
      flushOutbox(room);
    }, (err) => {
      room.sending = false;
      onSendFailed(room, item, err);
    });
  }

  function onSendFailed(room, item, err) {
    if (!room.outbox.includes(item)) return;
    switch (err.code) {
      case 'offline':
      case 'disconnected':
        return; // flushed again once reconnected
      case 'rate_limited':
        setTimeout(() => flushOutbox(room), Number(err.data.retryAfterMs) || 1000);
        return;
      case 'timeout':
      case 'unavailable':
        setTimeout(() => flushOutbox(room), 2000);
        return;
      default:
        item.failed = err.message || err.code;
        scheduleRender();
        flushOutbox(room);
    }
  }

  function settleOutgoing(room, clientId) {
    const index = room.outbox.findIndex((item) => item.clientId === clientId);
    if (index === -1) return;
    room.outbox.splice(index, 1);
    saveOutbox();
  }

  function retryOutgoing(room, clientId) {
    const item = room.outbox.find((entry) => entry.clientId === clientId);
    if (!item) return;
    item.failed = null;
    flushOutbox(room);
    scheduleRender();
  }

  function discardOutgoing(room, clientId) {
    settleOutgoing(room, clientId);
    scheduleRender();
    $('composer-input').focus();
  }

  // ---------------------------------------------------------------------------
  // Rendering: batched; the timeline reuses nodes so focus and scroll survive
  // ---------------------------------------------------------------------------

  const ui = {
    queued: false, toBottom: false, shownRoom: null, noRoomNode: null, toastTimer: null,
    replyTo: null, // {room, id, user, content}: the message the composer answers
    editing: null, // {room, id}: the message being edited in place
    mention: null, // {start, query, options, index}: the open @mention list
    search: null, // {text, results, hasMore, loading}
    uploads: [], // {key, room, name, size, state: 'uploading'|'done'|'failed', attachment, error}
    recorder: null, // {recorder, chunks, started, timer, stream}
    holdStarted: null, // when the microphone button was pressed, while it is held
  };

  function scheduleRender(options = {}) {
    if (options.toBottom) ui.toBottom = true;
    if (ui.queued) return;
    ui.queued = true;
    setTimeout(render, 0);
  }

  function render() {
    ui.queued = false;
    renderRoomList();
    renderHeader();
    renderTimeline();
    renderPresence();
    renderTyping();
    renderComposer();
    renderReplyBar();
    renderUploads();
    renderTitle();
    maybeSendRead();
  }

  /** Puts `nodes` in `parent` in order, moving or removing only what differs. */
  function reconcile(parent, nodes) {
    let cursor = parent.firstChild;
    for (const node of nodes) {
      if (node === cursor) cursor = cursor.nextSibling;
      else parent.insertBefore(node, cursor);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
  }

  function renderConnection() {
    const status = $('connection-status');
    const labels = { connecting: 'Connecting…', online: 'Online', offline: 'Offline' };
    let label = labels[app.connection];
    if (app.connection === 'reconnecting') {
      const seconds = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
      label = `Reconnecting in ${seconds}s`;
    }
    status.dataset.state = app.connection;
    $('connection-label').textContent = label;
    $('reconnect-now').hidden = !conn.wanted || (app.connection !== 'reconnecting' && app.connection !== 'offline');
  }

  function renderRoomList() {
    const nodes = [...app.rooms.values()].map(roomListNode);
    reconcile($('room-list'), nodes);
    $('rooms-empty').hidden = nodes.length > 0;
  }

  function roomListNode(room) {
    if (!room.listNode) {
      const item = make('li', 'room');
      item.dataset.room = room.name;
      const open = make('button', 'room-open');
      open.type = 'button';
      const partner = dmPartner(room.name);
      if (partner !== null) item.classList.add('dm');
      open.append(make('span', 'room-hash', partner === null ? '#' : '@'), make('span', 'room-name', partner ?? room.name), make('span', 'unread'));
      const leave = make('button', 'room-leave', '×');
      leave.type = 'button';
      leave.setAttribute('aria-label', `Leave ${roomLabel(room.name)}`);
      leave.title = `Leave ${roomLabel(room.name)}`;
      item.append(open, leave);
      room.listNode = item;
    }
    const item = room.listNode;
    const isCurrent = room.name === app.currentRoom;
    item.classList.toggle('current', isCurrent);
    item.classList.toggle('has-unread', room.unread > 0);
    const open = item.querySelector('.room-open');
    if (isCurrent) open.setAttribute('aria-current', 'true');
    else open.removeAttribute('aria-current');
    const badge = item.querySelector('.unread');
    badge.textContent = room.unread > 0 ? String(room.unread) : '';
    badge.dataset.count = String(room.unread);
    open.setAttribute('aria-label', room.unread > 0 ? `${roomLabel(room.name)}, ${room.unread} unread` : roomLabel(room.name));
    return item;
  }

  function renderHeader() {
    const room = currentRoom();
    $('room-title').textContent = room ? roomLabel(room.name) : 'No room';
    $('me-name').textContent = app.user || '';
    const partner = room ? dmPartner(room.name) : null;
    $('call-button').hidden = !partner || partner === app.user || Boolean(calling.current);
    $('video-call-button').hidden = $('call-button').hidden;
    const mute = $('mute-button');
    mute.hidden = !room;
    const muted = Boolean(room) && (push.muteAll || push.muted.has(room.name));
    mute.setAttribute('aria-pressed', String(Boolean(room) && push.muted.has(room.name)));
    mute.classList.toggle('muted', muted);
    mute.title = push.muteAll ? 'All rooms are muted (Settings)' : muted ? 'Unmute this room' : 'Mute this room';
    mute.setAttribute('aria-label', mute.title);
  }

  // ---------------------------------------------------------------------------
  // Calls: WebRTC audio (and video) between two people, signalled through the server
  // ---------------------------------------------------------------------------

  const calling = {
    current: null, // {id, role, peer, peerSession, state, pc, stream, started, iceServers, pending: [], video, cameraOff}
    ringtone: null,
    timer: null,
  };

  async function microphone() {
    if (!navigator.mediaDevices) throw new Error('This browser cannot make calls.');
    return navigator.mediaDevices.getUserMedia({ audio: true });
  }

  /** The microphone and, for a video call, the camera; without a camera, audio alone. */
  async function callMedia(video) {
    if (!video) return { stream: await microphone(), video: false };
    try {
      return { stream: await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: { ideal: 640 }, height: { ideal: 480 } } }), video: true };
    } catch {
      toast('The camera is not available: audio only.');
      return { stream: await microphone(), video: false };
    }
  }

  async function startCall(partner, video = false) {
    if (calling.current) return;
    let media;
    try {
      media = await callMedia(video);
    } catch {
      toast('The microphone is not available.');
      return;
    }
    calling.current = {
      id: null, role: 'caller', peer: partner, peerSession: null, state: 'calling', pc: null, stream: media.stream, started: 0,
      iceServers: [], pending: [], video: media.video, cameraOff: false,
    };
    renderCall();
    try {
      const answer = await request('call', { user: partner, video: media.video });
      if (!calling.current) return;
      calling.current.id = answer.call;
      calling.current.iceServers = Array.isArray(answer.iceServers) ? answer.iceServers : [];
    } catch (err) {
      endCall(err.message || 'The call failed.');
    }
  }

  function sendSignal(type, data) {
    const call = calling.current;
    if (!call || !call.id) return;
    const payload = { call: call.id, type };
    if (data !== undefined) payload.data = data;
    if (call.role === 'caller' && call.peerSession) payload.toSession = call.peerSession;
    request('signal', payload).catch(ignore);
  }

  function onCallEvent(data) {
    if (typeof data.call !== 'string' || typeof data.type !== 'string') return;
    const call = calling.current;
    if (data.type === 'ring') {
      if (call) {
        request('signal', { call: data.call, type: 'busy' }).catch(ignore);
        return;
      }
      calling.current = {
        id: data.call, role: 'callee', peer: data.from, peerSession: data.fromSession, state: 'ringing', pc: null, stream: null,
        started: 0, iceServers: Array.isArray(data.iceServers) ? data.iceServers : [], pending: [], video: data.video === true, cameraOff: false,
      };
      startRingtone();
      renderCall();
      // With push on, the service worker shows the call (the server sees this tab hidden).
      if (document.visibilityState === 'hidden' && !push.subscribed && app.settings.notify && 'Notification' in window && Notification.permission === 'granted') {
        new Notification(`${data.from} is calling`, { tag: data.call });
      }
      return;
    }
    if (!call || call.id !== data.call) return;
    switch (data.type) {
      case 'accept':
        call.peerSession = data.fromSession;
        connectPeer(true);
        break;
      case 'offer':
        connectPeer(false).then(() => answerOffer(data.data));
        break;
      case 'answer':
        if (call.pc) call.pc.setRemoteDescription({ type: 'answer', sdp: data.data }).catch(ignore);
        break;
      case 'candidate':
        addCandidate(data.data);
        break;
      case 'decline':
        endCall(`${call.peer} declined the call.`);
        break;
      case 'busy':
        endCall(`${call.peer} is in another call.`);
        break;
      case 'answered':
        endCall(null);
        break;
      case 'cancel':
      case 'missed':
        endCall(call.role === 'callee' ? `Missed call from ${call.peer}.` : 'No answer.');
        break;
      case 'hangup':
        endCall('The call ended.');
        break;
      default:
        break;
    }
  }

  async function acceptCall() {
    const call = calling.current;
    if (!call || call.state !== 'ringing') return;
    stopRingtone();
    try {
      // Without a camera here, this side only receives the caller's video.
      call.stream = (await callMedia(call.video)).stream;
    } catch {
      sendSignal('decline');
      endCall('The microphone is not available.');
      return;
    }
    call.state = 'connecting';
    renderCall();
    sendSignal('accept');
  }

  function declineCall() {
    if (!calling.current) return;
    sendSignal('decline');
    endCall(null);
  }

  function hangUp() {
    const call = calling.current;
    if (!call) return;
    sendSignal(call.role === 'caller' && call.state === 'calling' ? 'cancel' : 'hangup');
    endCall(null);
  }

  async function connectPeer(offering) {
    const call = calling.current;
    if (!call || call.pc) return;
    const pc = new RTCPeerConnection({ iceServers: call.iceServers });
    call.pc = pc;
    call.state = 'connecting';
    for (const track of call.stream ? call.stream.getTracks() : []) pc.addTrack(track, call.stream);
    pc.addEventListener('icecandidate', (event) => {
      if (event.candidate) sendSignal('candidate', JSON.stringify(event.candidate.toJSON()));
    });
    pc.addEventListener('track', (event) => {
      // A video call plays the other side (sound too) in the large video; an audio call in the audio element.
      const player = call.video ? $('call-remote') : $('call-audio');
      if (player.srcObject !== event.streams[0]) player.srcObject = event.streams[0];
      player.play().catch(ignore);
    });
    pc.addEventListener('iceconnectionstatechange', () => {
      const state = pc.iceConnectionState;
      if (state === 'connected' || state === 'completed') {
        if (!call.started) call.started = Date.now();
        call.state = 'connected';
      } else if (state === 'disconnected') {
        call.state = 'reconnecting';
      } else if (state === 'failed') {
        endCall('The connection was lost.');
        return;
      }
      renderCall();
    });
    renderCall();
    if (offering) {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      sendSignal('offer', offer.sdp);
    }
  }

  async function answerOffer(sdp) {
    const call = calling.current;
    if (!call || !call.pc) return;
    await call.pc.setRemoteDescription({ type: 'offer', sdp });
    for (const candidate of call.pending.splice(0)) call.pc.addIceCandidate(candidate).catch(ignore);
    const answer = await call.pc.createAnswer();
    await call.pc.setLocalDescription(answer);
    sendSignal('answer', answer.sdp);
  }

  function addCandidate(text) {
    const call = calling.current;
    let candidate;
    try {
      candidate = JSON.parse(text);
    } catch {
      return;
    }
    if (call.pc && call.pc.remoteDescription) call.pc.addIceCandidate(candidate).catch(ignore);
    else call.pending.push(candidate);
  }

  function endCall(message) {
    const call = calling.current;
    if (!call) return;
    calling.current = null;
    stopRingtone();
    if (call.pc) call.pc.close();
    for (const track of call.stream ? call.stream.getTracks() : []) track.stop();
    for (const id of ['call-audio', 'call-remote', 'call-local']) $(id).srcObject = null;
    if (message) toast(message);
    renderCall();
    scheduleRender();
  }

  function toggleCamera() {
    const call = calling.current;
    if (!call || !call.stream) return;
    call.cameraOff = !call.cameraOff;
    for (const track of call.stream.getVideoTracks()) track.enabled = !call.cameraOff;
    renderCall();
  }

  function toggleMute() {
    const call = calling.current;
    if (!call || !call.stream) return;
    call.muted = !call.muted;
    for (const track of call.stream.getAudioTracks()) track.enabled = !call.muted;
    renderCall();
  }

  function startRingtone() {
    stopRingtone();
    const play = () => {
      const audioContext = alerts.audio;
      if (!audioContext || audioContext.state !== 'running') return;
      for (const offset of [0, 0.4]) {
        const osc = audioContext.createOscillator();
        const gain = audioContext.createGain();
        osc.frequency.value = 480;
        gain.gain.setValueAtTime(0.08, audioContext.currentTime + offset);
        gain.gain.setValueAtTime(0, audioContext.currentTime + offset + 0.3);
        osc.connect(gain).connect(audioContext.destination);
        osc.start(audioContext.currentTime + offset);
        osc.stop(audioContext.currentTime + offset + 0.32);
      }
    };
    play();
    calling.ringtone = setInterval(play, 2000);
  }

  function stopRingtone() {
    clearInterval(calling.ringtone);
    calling.ringtone = null;
  }

  function renderCall() {
    const call = calling.current;
    const screen = $('call-screen');
    screen.hidden = !call;
    clearInterval(calling.timer);
    calling.timer = null;
    if (!call) return;
    screen.dataset.state = call.state;
    screen.classList.toggle('video', Boolean(call.video));
    $('call-peer').textContent = call.peer;
    const status = {
      calling: 'Calling…', ringing: call.video ? 'Incoming video call' : 'Incoming call', connecting: 'Connecting…', reconnecting: 'Reconnecting…', connected: '',
    }[call.state] || '';
    $('call-videos').hidden = !call.video || call.state === 'ringing';
    const local = $('call-local');
    const sendsVideo = Boolean(call.stream) && call.stream.getVideoTracks().length > 0;
    local.hidden = !sendsVideo;
    if (sendsVideo && local.srcObject !== call.stream) local.srcObject = call.stream;
    $('call-camera').hidden = !sendsVideo || call.state === 'ringing';
    $('call-camera').textContent = call.cameraOff ? 'Camera on' : 'Camera off';
    $('call-camera').setAttribute('aria-pressed', String(Boolean(call.cameraOff)));
    $('call-status').textContent = status;
    if (call.state === 'connected') {
      const tick = () => { $('call-status').textContent = formatDuration(Date.now() - call.started); };
      tick();
      calling.timer = setInterval(tick, 1000);
    }
    $('call-accept').hidden = call.state !== 'ringing';
    $('call-decline').hidden = call.state !== 'ringing';
    $('call-mute').hidden = call.state === 'ringing' || call.state === 'calling';
    $('call-mute').textContent = call.muted ? 'Unmute' : 'Mute';
    $('call-mute').setAttribute('aria-pressed', String(Boolean(call.muted)));
    $('call-hangup').hidden = call.state === 'ringing';
    $('call-hangup').textContent = call.state === 'calling' ? 'Cancel' : 'Hang up';
    $('call-button').hidden = true;
    $('video-call-button').hidden = true;
  }

  function renderTitle() {
    let unread = 0;
    for (const room of app.rooms.values()) unread += room.unread;
    const room = currentRoom();
    const base = room ? `${roomLabel(room.name)} · Parley` : 'Parley';
    document.title = unread ? `(${unread}) ${base}` : base;
    renderFavicon(unread);
  }

  /** The tab's icon with the unread count on it (drawn once per count). */
  function renderFavicon(unread) {
    const link = document.querySelector('link[rel="icon"]');
    if (!link || ui.faviconCount === unread) return;
    if (!ui.faviconBase) ui.faviconBase = link.href;
    ui.faviconCount = unread;
    if (!unread) {
      link.href = ui.faviconBase;
      link.dataset.unread = '0';
      return;
    }
    const image = new Image();
    image.onload = () => {
      if (ui.faviconCount !== unread) return;
      const canvas = document.createElement('canvas');
      canvas.width = 64;
      canvas.height = 64;
      const context = canvas.getContext('2d');
      context.drawImage(image, 0, 0, 64, 64);
      context.fillStyle = '#d93025';
      context.beginPath();
      context.arc(44, 20, 20, 0, 2 * Math.PI);
      context.fill();
      context.fillStyle = '#fff';
      context.font = 'bold 26px system-ui, sans-serif';
      context.textAlign = 'center';
      context.textBaseline = 'middle';
      context.fillText(unread > 99 ? '99' : String(unread), 44, 21);
      link.href = canvas.toDataURL('image/png');
      link.dataset.unread = String(unread);
    };
    image.src = ui.faviconBase;
  }

  function renderPresence() {
    const room = currentRoom();
    const users = room ? [...room.presence.keys()].sort(collator.compare) : [];
    const nodes = users.map((user) => {
      const item = make('li', user === app.user ? 'person self' : 'person', user);
      item.dataset.user = user;
      return item;
    });
    const unlisted = room ? room.online - users.length : 0;
    if (unlisted > 0) nodes.push(make('li', 'person more', `and ${unlisted} more`));
    $('presence-list').replaceChildren(...nodes);
    $('presence-count').textContent = room ? `(${Math.max(users.length, room.online)})` : '';
  }

  function renderTyping() {
    const room = currentRoom();
    const users = room ? [...room.typing.keys()].sort(collator.compare) : [];
    let text = '';
    if (users.length === 1) text = `${users[0]} is typing…`;
    else if (users.length > 1 && users.length <= 3) text = `${listText(users)} are typing…`;
    else if (users.length > 3) text = 'Several people are typing…';
    const indicator = $('typing-indicator');
    if (indicator.textContent !== text) indicator.textContent = text;
  }

  function renderComposer() {
    const room = currentRoom();
    const input = $('composer-input');
    input.disabled = !room;
    $('composer-send').disabled = !room;
    input.placeholder = room ? `Message ${roomLabel(room.name)}` : 'Join a room to chat';
    updateCounter();
  }

  function isNearBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX;
  }

  function renderTimeline() {
    const list = $('messages');
    const room = currentRoom();
    if (!room) {
      ui.shownRoom = null;
      reconcile(list, [noRoomNode()]);
      setPill(false);
      return;
    }
    const switched = ui.shownRoom !== room.name;
    const nearBottom = isNearBottom(list);
    const before = { height: list.scrollHeight, top: list.scrollTop };
    reconcile(list, timelineNodes(room));
    const newestSeq = room.messages.length ? room.messages[room.messages.length - 1].seq : 0;
    const newFromOthers = hasNewFromOthers(room);
    if (switched || ui.toBottom || (nearBottom && !room.prepended)) {
      list.scrollTop = list.scrollHeight;
      setPill(false);
    } else if (room.prepended) {
      list.scrollTop = before.top + (list.scrollHeight - before.height);
    } else if (newFromOthers) {
      setPill(true);
    }
    ui.shownRoom = room.name;
    ui.toBottom = false;
    room.prepended = false;
    room.renderedSeq = newestSeq;
    if (room.synced && room.hasOlder && list.scrollHeight <= list.clientHeight + NEAR_TOP_PX) loadOlder(room);
  }

  function hasNewFromOthers(room) {
    for (let i = room.messages.length - 1; i >= 0 && room.messages[i].seq > room.renderedSeq; i--) {
      if (room.messages[i].user !== app.user && !CHANGE_KINDS.has(room.messages[i].kind)) return true;
    }
    return false;
  }

  /** The current room's timeline: history status, days, messages, notices, receipts, outbox. */
  function timelineNodes(room) {
    const nodes = [historyNode(room)];
    const receipts = receiptsBySeq(room);
    let previous = null;
    for (const item of mergedTimeline(room)) {
      const day = dayKey(item.time);
      if (!previous || dayKey(previous.time) !== day) nodes.push(dayNode(room, day, item.time));
      if (item.msg) {
        const node = messageNode(room, item.msg);
        node.classList.toggle('grouped', isGrouped(previous, item));
        nodes.push(node);
        const readers = receipts.get(item.msg.seq);
        if (readers) nodes.push(seenByNode(room, item.msg, readers));
      } else {
        nodes.push(item.node);
      }
      previous = item;
    }
    for (const item of room.outbox) nodes.push(outgoingNode(room, item));
    if (nodes.length === 1 && room.synced) nodes.push(emptyRoomNode(room));
    return nodes;
  }

  function mergedTimeline(room) {
    const items = [];
    let n = 0;
    const notices = room.notices;
    for (const msg of room.messages) {
      if (CHANGE_KINDS.has(msg.kind)) continue;
      while (n < notices.length && notices[n].afterSeq < msg.seq) items.push(notices[n++]);
      const time = Date.parse(msg.timestamp);
      items.push({ msg, time: Number.isNaN(time) ? 0 : time });
    }
    while (n < notices.length) items.push(notices[n++]);
    return items;
  }

  function isGrouped(previous, item) {
    return Boolean(previous && previous.msg && item.msg && !previous.msg.kind && !item.msg.kind) &&
      !item.msg.replyTo && !(item.msg.reactions && item.msg.reactions.length) && !(item.msg.attachments && item.msg.attachments.length) &&
      previous.msg.user === item.msg.user &&
      dayKey(previous.time) === dayKey(item.time) &&
      item.time - previous.time < GROUP_WINDOW_MS;
  }

  function dayKey(time) {
    const date = new Date(time);
    return `${date.getFullYear()}-${date.getMonth()}-${date.getDate()}`;
  }

  function dayLabel(time) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (dayKey(time) === dayKey(today.getTime())) return 'Today';
    if (dayKey(time) === dayKey(yesterday.getTime())) return 'Yesterday';
    return dayFormat.format(new Date(time));
  }

  function dayNode(room, key, time) {
    let node = room.dayNodes.get(key);
    if (!node) {
      node = make('li', 'day-separator');
      node.setAttribute('role', 'separator');
      node.append(make('span', 'day-label'));
      room.dayNodes.set(key, node);
    }
    node.firstChild.textContent = dayLabel(time); // "Today" becomes "Yesterday" at midnight
    return node;
  }

  function messageNode(room, msg) {
    if (msg.kind) return moderationNode(room, msg);
    const editing = ui.editing && ui.editing.room === room.name && ui.editing.id === msg.id;
    const version = `${msg.version}${editing ? 'e' : ''}`;
    let node = room.nodes.get(msg.seq);
    if (node && node.dataset.version === version) return node;
    const fresh = make('li', msg.user === app.user ? 'message own' : 'message');
    if (node) node.replaceWith(fresh);
    node = fresh;
    node.dataset.seq = String(msg.seq);
    node.dataset.room = room.name;
    node.dataset.id = msg.id;
    node.dataset.version = version;
    node.tabIndex = -1; // a tap focuses it, which shows its actions on a touch screen
    node.classList.toggle('deleted', Boolean(msg.deleted));
    node.classList.toggle('mentions-me', !msg.deleted && Array.isArray(msg.mentions) && msg.mentions.includes(app.user));
    const meta = make('div', 'meta');
    meta.append(make('span', 'author', msg.user), timeNode(msg.timestamp));
    if (msg.edited && !msg.deleted) {
      const edited = make('span', 'edited', '(edited)');
      edited.title = `Edited ${fullFormat.format(new Date(msg.edited))}`;
      meta.append(edited);
    }
    node.append(meta);
    if (msg.replyTo && msg.quote) node.append(quoteNode(room, msg.quote));
    if (editing) {
      node.append(editNode(room, msg));
    } else {
      const content = make('div', 'content');
      if (msg.deleted) content.append(make('em', 'tombstone', 'This message was deleted.'));
      else appendRich(content, msg.content);
      if (msg.deleted || msg.content) node.append(content);
    }
    if (!msg.deleted && Array.isArray(msg.attachments) && msg.attachments.length) node.append(attachmentsNode(msg.attachments));
    if (!msg.deleted && msg.reactions && msg.reactions.length) node.append(reactionsNode(room, msg));
    if (!msg.deleted && !editing) node.append(actionsNode(room, msg));
    room.nodes.set(msg.seq, node);
    return node;
  }

  // ---------------------------------------------------------------------------
  // Attachments: files, images, voice messages
  // ---------------------------------------------------------------------------

  /** The file's address with our credential (an <img> or <audio> sends no header). */
  function attachmentUrl(attachment) {
    const query = app.token ? `token=${encodeURIComponent(app.token)}` : `user=${encodeURIComponent(app.user)}`;
    return `${attachment.url}?${query}`;
  }

  function formatSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function formatDuration(ms) {
    const seconds = Math.round(ms / 1000);
    return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
  }

  function attachmentsNode(attachments) {
    const list = make('div', 'attachments');
    for (const attachment of attachments) {
      if (!attachment || typeof attachment.url !== 'string') continue;
      const url = attachmentUrl(attachment);
      if (INLINE_IMAGES.has(attachment.type)) {
        const link = make('a', 'attachment image');
        link.href = url;
        link.target = '_blank';
        link.rel = 'noopener';
        const image = make('img');
        image.src = url;
        image.alt = attachment.name;
        image.loading = 'lazy';
        if (attachment.width && attachment.height) {
          const scale = Math.min(1, 320 / attachment.width, 240 / attachment.height);
          image.width = Math.max(1, Math.round(attachment.width * scale));
          image.height = Math.max(1, Math.round(attachment.height * scale));
        }
        link.append(image);
        list.append(link);
      } else if (attachment.type.startsWith('audio/')) {
        const voice = make('div', 'attachment audio');
        const player = make('audio');
        player.controls = true;
        player.preload = 'metadata';
        player.src = url;
        voice.append(player);
        if (attachment.duration) voice.append(make('span', 'attachment-meta', formatDuration(attachment.duration)));
        list.append(voice);
      } else if (attachment.type.startsWith('video/')) {
        const player = make('video', 'attachment video');
        player.controls = true;
        player.preload = 'metadata';
        player.src = url;
        list.append(player);
      } else {
        const card = make('a', 'attachment file');
        card.href = url;
        card.download = attachment.name;
        card.append(make('span', 'attachment-name', attachment.name), make('span', 'attachment-meta', `${attachment.type} · ${formatSize(attachment.size)}`));
        list.append(card);
      }
    }
    return list;
  }

  /** Uploads a file to the current room at once; it goes out with the next message. */
  function uploadFile(file, { duration = null, sendNow = false } = {}) {
    const room = currentRoom();
    if (!room || !file) return;
    if (ui.uploads.filter((upload) => upload.room === room.name).length >= MAX_ATTACHMENTS) {
      toast(`At most ${MAX_ATTACHMENTS} files per message.`);
      return;
    }
    const upload = { key: newClientId(), room: room.name, name: file.name || 'file', size: file.size, state: 'uploading', attachment: null, error: null };
    ui.uploads.push(upload);
    renderUploads();
    const query = new URLSearchParams({ name: upload.name });
    if (duration !== null) query.set('duration', String(Math.round(duration)));
    if (!app.token) query.set('user', app.user);
    const headers = app.token ? { Authorization: `Bearer ${app.token}` } : {};
    fetch(`/api/rooms/${encodeURIComponent(room.name)}/attachments?${query}`, { method: 'POST', body: file, headers })
      .then(async (response) => {
        const body = await response.json().catch(() => ({}));
        if (!response.ok) throw new Error((body.error && body.error.message) || `upload failed (${response.status})`);
        upload.attachment = body;
        upload.state = 'done';
        if (sendNow) sendMessage(room, '');
      })
      .catch((err) => {
        upload.state = 'failed';
        upload.error = err.message;
        toast(`${upload.name}: ${err.message}`);
      })
      .finally(renderUploads);
  }

  function renderUploads() {
    const list = $('uploads');
    const room = currentRoom();
    const mine = room ? ui.uploads.filter((upload) => upload.room === room.name) : [];
    list.hidden = !mine.length;
    list.replaceChildren(...mine.map((upload) => {
      const item = make('li', `upload ${upload.state}`);
      item.dataset.state = upload.state;
      const label = upload.state === 'uploading' ? 'uploading…' : upload.state === 'failed' ? upload.error : formatSize(upload.size);
      item.append(make('span', 'upload-name', upload.name), make('span', 'upload-meta', label));
      const remove = make('button', 'link-button', 'Remove');
      remove.type = 'button';
      remove.setAttribute('aria-label', `Remove ${upload.name}`);
      remove.addEventListener('click', () => {
        ui.uploads = ui.uploads.filter((other) => other !== upload);
        renderUploads();
      });
      item.append(remove);
      return item;
    }));
  }

  function onFilesChosen(files) {
    for (const file of files) uploadFile(file);
  }

  function onComposerPaste(event) {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (!files.length) return;
    event.preventDefault();
    onFilesChosen(files);
  }

  function onDrop(event) {
    const files = [...(event.dataTransfer ? event.dataTransfer.files : [])];
    document.body.classList.remove('dragging');
    if (!files.length || !currentRoom()) return;
    event.preventDefault();
    onFilesChosen(files);
  }

  // Voice messages: tap the microphone to record, then send or cancel.
  async function startRecording() {
    if (ui.recorder || !currentRoom()) return;
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      toast('This browser cannot record audio.');
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch {
      toast('The microphone is not available.');
      return;
    }
    const recorder = new MediaRecorder(stream);
    const state = { recorder, stream, chunks: [], started: Date.now(), timer: null, send: false };
    recorder.addEventListener('dataavailable', (event) => {
      if (event.data && event.data.size) state.chunks.push(event.data);
    });
    recorder.addEventListener('stop', () => {
      stream.getTracks().forEach((track) => track.stop());
      clearInterval(state.timer);
      ui.recorder = null;
      renderRecorder();
      if (!state.send || !state.chunks.length) return;
      const type = recorder.mimeType || 'audio/webm';
      const extension = type.includes('ogg') ? 'ogg' : type.includes('mp4') ? 'm4a' : 'webm';
      const file = new File(state.chunks, `voice-message.${extension}`, { type });
      uploadFile(file, { duration: Date.now() - state.started, sendNow: true });
    });
    recorder.start(250);
    state.timer = setInterval(renderRecorder, 250);
    ui.recorder = state;
    renderRecorder();
  }

  function stopRecording(send) {
    if (!ui.recorder) return;
    ui.recorder.send = send;
    ui.recorder.recorder.stop();
  }

  function renderRecorder() {
    const bar = $('recorder');
    bar.hidden = !ui.recorder;
    $('record-start').hidden = Boolean(ui.recorder);
    if (ui.recorder) $('record-time').textContent = formatDuration(Date.now() - ui.recorder.started);
  }

  function moderationNode(room, row) {
    let node = room.nodes.get(row.seq);
    if (node) return node;
    node = make('li', 'notice moderation', moderationText(row));
    node.dataset.seq = String(row.seq);
    node.dataset.room = room.name;
    node.dataset.kind = row.kind;
    const lift = { mute: 'unmute', ban: 'unban' }[row.kind];
    if (lift && isModerator() && row.target !== app.user) {
      node.append(' ', actionButton(lift === 'unmute' ? 'Unmute' : 'Lift the ban', lift, () => moderate(room, row.target, lift)));
    }
    room.nodes.set(row.seq, node);
    return node;
  }

  function quoteNode(room, quote) {
    const node = make('button', 'quote');
    node.type = 'button';
    node.append(make('span', 'quote-author', quote.user));
    node.append(make('span', 'quote-text', quote.deleted ? 'Deleted message' : quote.content));
    node.addEventListener('click', () => {
      const answered = room.byId.get(quote.id);
      const target = answered && room.nodes.get(answered.seq);
      if (target) {
        target.scrollIntoView({ block: 'center' });
        target.classList.add('flash');
        setTimeout(() => target.classList.remove('flash'), 1200);
      }
    });
    return node;
  }

  function reactionsNode(room, msg) {
    const bar = make('div', 'reactions');
    for (const reaction of msg.reactions) {
      const mine = reaction.users.includes(app.user);
      const chip = make('button', mine ? 'reaction mine' : 'reaction');
      chip.type = 'button';
      chip.dataset.emoji = reaction.emoji;
      chip.setAttribute('aria-pressed', String(mine));
      chip.title = listText(reaction.users);
      chip.append(make('span', 'reaction-emoji', reaction.emoji), make('span', 'reaction-count', String(reaction.users.length)));
      chip.addEventListener('click', () => toggleReaction(room, msg, reaction.emoji));
      bar.append(chip);
    }
    return bar;
  }

  function actionButton(label, className, onClick) {
    const button = make('button', `message-action ${className}`, label);
    button.type = 'button';
    button.addEventListener('click', onClick);
    return button;
  }

  function actionsNode(room, msg) {
    const bar = make('div', 'message-actions');
    bar.setAttribute('role', 'toolbar');
    bar.setAttribute('aria-label', `Actions on ${msg.user}'s message`);
    bar.append(actionButton('Reply', 'reply', () => startReply(room, msg)));
    const react = actionButton('React', 'react', () => {
      picker.hidden = !picker.hidden;
    });
    const picker = make('div', 'reaction-picker');
    picker.hidden = true;
    for (const emoji of QUICK_REACTIONS) {
      const option = actionButton(emoji, 'pick', () => {
        picker.hidden = true;
        toggleReaction(room, msg, emoji);
      });
      option.dataset.emoji = emoji;
      option.setAttribute('aria-label', `React with ${emoji}`);
      picker.append(option);
    }
    bar.append(react, picker);
    if (msg.user === app.user) bar.append(actionButton('Edit', 'edit', () => startEdit(room, msg)));
    if (msg.user === app.user || isModerator()) {
      const remove = actionButton('Delete', 'delete', () => {
        if (remove.dataset.confirm !== 'yes') {
          remove.dataset.confirm = 'yes';
          remove.textContent = 'Delete for everyone?';
          setTimeout(() => {
            remove.dataset.confirm = '';
            remove.textContent = 'Delete';
          }, 4000);
          return;
        }
        changeMessage(room, 'delete', { id: msg.id }).catch(ignore);
      });
      bar.append(remove);
    }
    if (isModerator() && msg.user !== app.user) {
      bar.append(actionButton('Mute 10 min', 'mute', () => moderate(room, msg.user, 'mute', 600)));
      bar.append(actionButton('Kick', 'kick', () => moderate(room, msg.user, 'kick')));
      bar.append(actionButton('Ban', 'ban', () => moderate(room, msg.user, 'ban')));
    }
    return bar;
  }

  function editNode(room, msg) {
    const form = make('form', 'edit-form');
    const field = make('textarea', 'edit-input');
    field.value = msg.content;
    field.rows = 2;
    field.setAttribute('aria-label', 'Edit message');
    const save = make('button', 'button primary edit-save', 'Save');
    save.type = 'submit';
    const cancel = make('button', 'button edit-cancel', 'Cancel');
    cancel.type = 'button';
    const stop = () => {
      ui.editing = null;
      msg.version += 1;
      scheduleRender();
    };
    cancel.addEventListener('click', stop);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      finishEdit(room, msg, field.value);
    });
    field.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') stop();
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        finishEdit(room, msg, field.value);
      }
    });
    form.append(field, save, cancel);
    setTimeout(() => field.focus(), 0);
    return form;
  }

  /** Links and @mentions made visible; everything stays text. */
  function appendRich(parent, text) {
    appendLinkified(parent, text, appendMentions);
  }

  function appendMentions(parent, text) {
    let last = 0;
    for (const match of text.matchAll(MENTION_RE)) {
      const start = match.index + match[1].length;
      parent.append(document.createTextNode(text.slice(last, start)));
      parent.append(make('span', match[2] === app.user ? 'mention mention-me' : 'mention', `@${match[2]}`));
      last = start + 1 + match[2].length;
    }
    parent.append(document.createTextNode(text.slice(last)));
  }

  function timeNode(timestamp) {
    const node = make('time', 'time');
    const date = new Date(timestamp);
    if (!Number.isNaN(date.getTime())) {
      node.dateTime = timestamp;
      node.textContent = timeFormat.format(date);
      node.title = fullFormat.format(date);
    }
    return node;
  }

  /** Text with http(s) links made clickable; the rest goes through `appendText` (plain text). */
  function appendLinkified(parent, text, appendText = (node, plain) => node.append(document.createTextNode(plain))) {
    let last = 0;
    for (const match of text.matchAll(URL_RE)) {
      const url = match[0].replace(/[.,;:!?)\]}]+$/, '');
      appendText(parent, text.slice(last, match.index));
      const link = make('a', null, url);
      link.href = url;
      link.target = '_blank';
      link.rel = 'noopener noreferrer';
      parent.append(link);
      last = match.index + url.length;
    }
    appendText(parent, text.slice(last));
  }

  function historyNode(room) {
    if (!room.historyNode) {
      const node = make('li', 'history-status');
      const button = make('button', 'link-button', 'Load older messages');
      button.type = 'button';
      button.addEventListener('click', () => loadOlder(room));
      node.append(button, make('span', 'history-label'));
      room.historyNode = node;
    }
    const node = room.historyNode;
    const [button, label] = node.children;
    button.hidden = !room.hasOlder;
    button.textContent = room.loadingOlder ? 'Loading older messages…' : 'Load older messages';
    node.setAttribute('aria-busy', String(room.loadingOlder));
    let text = '';
    if (room.error) text = room.error;
    else if (!room.synced) text = 'Loading messages…';
    else if (!room.hasOlder) text = `This is the beginning of ${roomLabel(room.name)}.`;
    label.textContent = text;
    node.classList.toggle('error', Boolean(room.error));
    return node;
  }

  function emptyRoomNode(room) {
    if (!room.emptyNode) room.emptyNode = make('li', 'empty', 'No messages yet. Say hello!');
    return room.emptyNode;
  }

  function noRoomNode() {
    if (!ui.noRoomNode) {
      const node = make('li', 'empty');
      node.append(make('p', null, 'Join a room to start chatting.'));
      const button = make('button', 'button primary', 'Join #general');
      button.type = 'button';
      button.addEventListener('click', () => joinRoomByName('general'));
      node.append(button);
      ui.noRoomNode = node;
    }
    return ui.noRoomNode;
  }

  function outgoingNode(room, item) {
    if (!item.node) {
      const node = make('li', 'pending own');
      node.dataset.room = room.name;
      node.dataset.clientId = item.clientId;
      const meta = make('div', 'meta');
      meta.append(make('span', 'author', app.user || ''), make('span', 'status'));
      const content = make('div', 'content');
      appendLinkified(content, item.content);
      const actions = make('div', 'pending-actions');
      const retry = make('button', 'link-button', 'Retry');
      retry.type = 'button';
      retry.addEventListener('click', () => retryOutgoing(room, item.clientId));
      const discard = make('button', 'link-button', 'Discard');
      discard.type = 'button';
      discard.addEventListener('click', () => discardOutgoing(room, item.clientId));
      actions.append(retry, discard);
      node.append(meta, content, actions);
      item.node = node;
    }
    const node = item.node;
    node.classList.toggle('failed', Boolean(item.failed));
    node.querySelector('.status').textContent = item.failed ? `Not sent: ${item.failed}` : 'sending…';
    node.querySelector('.pending-actions').hidden = !item.failed;
    return node;
  }

  function setPill(visible) {
    $('new-messages').hidden = !visible;
  }

  function scrollToNewest() {
    const list = $('messages');
    list.scrollTop = list.scrollHeight;
    setPill(false);
    maybeSendRead();
  }

  function onTimelineScroll() {
    const list = $('messages');
    if (isNearBottom(list)) {
      setPill(false);
      maybeSendRead();
    }
    const room = currentRoom();
    if (room && list.scrollTop < NEAR_TOP_PX) loadOlder(room);
  }

  function announce(text) {
    const region = $('live-region');
    const line = make('p', null, text.length > 300 ? `${text.slice(0, 300)}…` : text);
    region.append(line);
    while (region.childElementCount > 5) region.firstElementChild.remove();
  }

  function toast(text) {
    const node = $('toast');
    node.textContent = text;
    node.hidden = false;
    clearTimeout(ui.toastTimer);
    ui.toastTimer = setTimeout(() => { node.hidden = true; }, 6000);
  }

  // ---------------------------------------------------------------------------
  // Typing: ours (renewed every 3 s while typing) and others' (indicator)
  // ---------------------------------------------------------------------------

  const typingOut = { room: null, active: false, lastSent: 0, idleTimer: null };

  function sendTyping(roomName, typing) {
    typingOut.room = roomName;
    typingOut.active = typing;
    typingOut.lastSent = Date.now();
    if (isOnline()) request('typing', { room: roomName, typing }).catch(ignore);
  }

  function noteTyping() {
    const room = currentRoom();
    if (!room) return;
    if (!$('composer-input').value.trim()) {
      stopTyping();
      return;
    }
    const stale = Date.now() - typingOut.lastSent >= TYPING_RENEW_MS;
    if (!typingOut.active || typingOut.room !== room.name || stale) sendTyping(room.name, true);
    clearTimeout(typingOut.idleTimer);
    typingOut.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(typingOut.idleTimer);
    if (typingOut.active) sendTyping(typingOut.room, false);
  }

  function onTypingEvent(data) {
    const room = app.rooms.get(data.room);
    if (!room || typeof data.user !== 'string' || data.user === app.user) return;
    clearTimeout(room.typing.get(data.user));
    if (data.typing) {
      room.typing.set(data.user, setTimeout(() => clearTypingOf(room, data.user), TYPING_EXPIRE_MS));
    } else {
      room.typing.delete(data.user);
    }
    scheduleRender();
  }

  function clearTypingOf(room, user) {
    if (!room.typing.has(user)) return;
    clearTimeout(room.typing.get(user));
    room.typing.delete(user);
    scheduleRender();
  }

  // ---------------------------------------------------------------------------
  // Read receipts: send ours when the room is seen, show "seen by" for others
  // ---------------------------------------------------------------------------

  function maybeSendRead() {
    const room = currentRoom();
    if (!room || document.visibilityState !== 'visible' || !document.hasFocus()) return;
    if (!isNearBottom($('messages'))) return;
    if (!room.joined || !isOnline() || room.lastSeq <= room.readSent) return;
    room.readSent = room.lastSeq;
    request('read', { room: room.name, seq: room.lastSeq }).catch(() => { room.readSent = 0; });
  }

  function onReadEvent(data) {
    const room = app.rooms.get(data.room);
    if (!room || typeof data.user !== 'string' || !Number.isInteger(data.seq)) return;
    // Our own read, on another device of ours: its badge clears here too.
    if (data.user === app.user && data.seq >= room.lastSeq && room.unread > 0) {
      room.unread = 0;
      scheduleRender();
    }
    if (data.seq <= (room.reads.get(data.user) || 0)) return;
    room.reads.set(data.user, data.seq);
    scheduleRender();
  }

  /**
   * A direct message or a mention for us. A DM room we do not have yet appears in the list with
   * its badge; a mention in a room we are not in is a toast. Rooms we are in get the message
   * itself anyway.
   */
  function onNotifyEvent(data) {
    const msg = data.message;
    if (typeof data.room !== 'string' || !isValidMessage(msg)) return;
    if (app.rooms.has(data.room)) return;
    if (data.kind === 'dm' && dmPartner(data.room) !== null) {
      const room = addRoom(data.room);
      room.unread += 1;
      if (document.visibilityState === 'hidden' && shouldAlert(room, msg)) alertNewMessage(room, msg);
      announce(`New direct message from ${msg.user}`);
      scheduleRender();
    } else if (data.kind === 'mention') {
      toast(`${msg.user} mentioned you in ${roomLabel(data.room)}: ${msg.content.slice(0, 120)}`);
    }
  }

  /** On each connect: the DMs we were sent while away, with their unread counts. */
  function syncInbox() {
    request('rooms', {}).then((answer) => {
      const entries = Array.isArray(answer.rooms) ? answer.rooms : [];
      for (const entry of entries) {
        if (!entry || typeof entry.room !== 'string' || !Number.isInteger(entry.unread)) continue;
        let room = app.rooms.get(entry.room);
        if (!room) {
          if (dmPartner(entry.room) === null || entry.unread === 0) continue;
          room = addRoom(entry.room);
        }
        if (!isRoomInView(room)) room.unread = Math.max(room.unread, entry.unread);
      }
      scheduleRender();
    }, ignore);
  }

  /** Maps a message seq to the users (not us) whose latest read is that message. */
  function receiptsBySeq(room) {
    const bySeq = new Map();
    for (const [user, seq] of room.reads) {
      if (user === app.user) continue;
      const msg = lastMessageUpTo(room.messages, seq);
      if (!msg || msg.user === user) continue; // the author has obviously seen their own message
      if (!bySeq.has(msg.seq)) bySeq.set(msg.seq, []);
      bySeq.get(msg.seq).push(user);
    }
    return bySeq;
  }

  function lastMessageUpTo(messages, seq) {
    let lo = 0;
    let hi = messages.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (messages[mid].seq <= seq) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo - 1; i >= 0; i--) if (!messages[i].kind) return messages[i];
    return null;
  }

  function seenByNode(room, msg, readers) {
    let node = room.seenNodes.get(msg.seq);
    if (!node) {
      node = make('li', msg.user === app.user ? 'seen-by own' : 'seen-by');
      node.dataset.room = room.name;
      node.dataset.seq = String(msg.seq);
      room.seenNodes.set(msg.seq, node);
    }
    const text = `seen by ${readers.sort(collator.compare).join(', ')}`;
    if (node.textContent !== text) node.textContent = text;
    return node;
  }

  // ---------------------------------------------------------------------------
  // Notifications: desktop notification and a WebAudio chime while hidden
  // ---------------------------------------------------------------------------

  const alerts = { audio: null, lastAt: 0, count: 0 };

  function unlockAudio() {
    const AudioCtx = window.AudioContext || window.webkitAudioContext;
    if (!AudioCtx) return;
    if (!alerts.audio) alerts.audio = new AudioCtx();
    if (alerts.audio.state === 'suspended') alerts.audio.resume().catch(ignore);
  }

  function playChime() {
    const ctx = alerts.audio;
    if (!ctx || ctx.state !== 'running') return;
    const start = ctx.currentTime;
    [880, 1318.5].forEach((frequency, i) => {
      const at = start + i * 0.11;
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = 'sine';
      osc.frequency.value = frequency;
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(0.12, at + 0.015);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.25);
      osc.connect(gain).connect(ctx.destination);
      osc.start(at);
      osc.stop(at + 0.26);
    });
  }

  function alertNewMessage(room, msg) {
    const now = Date.now();
    if (now - alerts.lastAt < ALERT_QUIET_MS) return;
    alerts.lastAt = now;
    alerts.count += 1;
    if (app.settings.sound) playChime();
    // With push on, the service worker shows it (the server sees this tab hidden).
    if (push.subscribed) return;
    if (!app.settings.notify || !('Notification' in window) || Notification.permission !== 'granted') return;
    try {
      const notification = new Notification(`${msg.user} in ${roomLabel(room.name)}`, {
        body: msg.content.length > 200 ? `${msg.content.slice(0, 200)}…` : msg.content,
        tag: `parley-${room.name}`,
      });
      notification.onclick = () => {
        window.focus();
        switchRoom(room.name);
        notification.close();
      };
    } catch {
      // Some mobile browsers only allow notifications from a service worker.
    }
  }

  function renderPermission() {
    const state = $('notify-permission-state');
    const button = $('notify-permission');
    if (!('Notification' in window)) {
      state.textContent = 'This browser does not support desktop notifications.';
      button.hidden = true;
      return;
    }
    const texts = {
      granted: 'Notifications are allowed.',
      denied: 'Notifications are blocked; allow them in your browser’s site settings.',
      default: 'The browser will ask you once.',
    };
    state.textContent = texts[Notification.permission] || '';
    button.hidden = Notification.permission !== 'default';
  }

  function askPermission() {
    const done = () => renderPermission();
    const result = Notification.requestPermission(done);
    if (result && typeof result.then === 'function') result.then(done, done);
  }

  // ---------------------------------------------------------------------------
  // Web Push: the service worker shows DMs, mentions and calls while Parley is closed
  // ---------------------------------------------------------------------------

  const push = {
    supported: 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window,
    registration: null,
    subscribed: false,
    muteAll: false,
    muted: new Set(),
    error: '',
  };

  /** A call to the HTTP API as the signed-in user (the token, or the name in open mode). */
  async function api(method, path, { params = {}, body = null, as = { user: app.user, token: app.token } } = {}) {
    const query = new URLSearchParams(params);
    if (!as.token) query.set('user', as.user);
    const headers = as.token ? { Authorization: `Bearer ${as.token}` } : {};
    if (body) headers['Content-Type'] = 'application/json';
    const response = await fetch(`${path}?${query}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
    if (response.status === 204) return {};
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((data.error && data.error.message) || `${path}: ${response.status}`);
    return data;
  }

  function base64UrlBytes(text) {
    const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
    return Uint8Array.from(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
  }

  async function startPush() {
    loadPushSettings();
    if (!push.supported) return renderPush();
    try {
      push.registration = await navigator.serviceWorker.register('/sw.js');
      const existing = await push.registration.pushManager.getSubscription();
      // Subscribed in this browser for this user: tell the server again (it may have lost it).
      if (existing && storage.get('push', null) === app.user) await saveSubscription(existing);
    } catch (err) {
      push.error = err.message || String(err);
    }
    renderPush();
  }

  async function loadPushSettings() {
    try {
      const settings = await api('GET', '/api/push/settings');
      push.muteAll = settings.muteAll === true;
      push.muted = new Set(Array.isArray(settings.mutedRooms) ? settings.mutedRooms : []);
    } catch {
      // Push is off on this server, or it is away: nothing is muted here.
    }
    renderPush();
    scheduleRender();
  }

  async function saveSubscription(subscription) {
    const json = subscription.toJSON();
    await api('POST', '/api/push/subscriptions', { body: { endpoint: json.endpoint, keys: json.keys } });
    push.subscribed = true;
    storage.set('push', app.user);
  }

  async function enablePush() {
    if (!push.registration) throw new Error(push.error || 'This browser cannot receive push notifications here.');
    const permission = await Notification.requestPermission();
    if (permission !== 'granted') throw new Error('Notifications are blocked; allow them in your browser’s site settings.');
    const { publicKey } = await api('GET', '/api/push/key');
    const key = base64UrlBytes(publicKey);
    let subscription = await push.registration.pushManager.getSubscription();
    if (subscription) {
      // A subscription made for another server's key cannot be reused.
      const current = subscription.options && subscription.options.applicationServerKey;
      const same = current && new Uint8Array(current).every((byte, i) => byte === key[i]);
      if (!same) {
        await subscription.unsubscribe();
        subscription = null;
      }
    }
    if (!subscription) subscription = await push.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    await saveSubscription(subscription);
  }

  /** Stops pushes to this browser (on sign-out too: the next person here must not get them). */
  async function disablePush() {
    // Who it is, taken now: sign-out forgets the user before the subscription is found.
    const as = { user: app.user, token: app.token };
    push.subscribed = false;
    storage.remove('push');
    const subscription = push.registration && await push.registration.pushManager.getSubscription();
    if (!subscription) return;
    await api('DELETE', '/api/push/subscriptions', { params: { endpoint: subscription.endpoint }, as }).catch(ignore);
  }

  function onPushToggle() {
    const box = $('setting-push');
    push.error = '';
    const change = box.checked ? enablePush() : disablePush();
    change.catch((err) => {
      push.error = err.message || String(err);
      push.subscribed = false;
    }).finally(renderPush);
  }

  async function savePushMutes(changes) {
    try {
      const settings = await api('PUT', '/api/push/settings', { body: changes });
      push.muteAll = settings.muteAll === true;
      push.muted = new Set(settings.mutedRooms || []);
    } catch (err) {
      toast(err.message || 'Could not save the setting.');
    }
    renderPush();
    scheduleRender();
  }

  function toggleRoomMute() {
    const room = currentRoom();
    if (!room) return;
    const muted = new Set(push.muted);
    if (muted.has(room.name)) muted.delete(room.name);
    else muted.add(room.name);
    announce(muted.has(room.name) ? `${roomLabel(room.name)} muted.` : `${roomLabel(room.name)} unmuted.`);
    savePushMutes({ mutedRooms: [...muted] });
  }

  function renderPush() {
    const box = $('setting-push');
    const state = $('push-state');
    box.checked = push.subscribed;
    box.disabled = !push.supported || !push.registration;
    $('setting-mute-all').checked = push.muteAll;
    if (push.error) state.textContent = push.error;
    else if (!push.supported) state.textContent = 'This browser does not support push notifications.';
    else if (!push.registration) state.textContent = 'Push notifications need a secure (https) page.';
    else state.textContent = push.subscribed ? 'This browser is told of direct messages, mentions and calls while Parley is closed.' : '';
  }

  function onServiceWorkerMessage(event) {
    const data = event.data || {};
    if (data.type !== 'open-room' || typeof data.room !== 'string' || !isRoomName(data.room)) return;
    addRoom(data.room);
    switchRoom(data.room);
  }

  function loadSettings() {
    const saved = storage.get('settings', {});
    app.settings.notify = saved.notify !== false;
    app.settings.sound = saved.sound !== false;
    $('setting-notify').checked = app.settings.notify;
    $('setting-sound').checked = app.settings.sound;
  }

  function saveSettings(event) {
    if (event && event.target && event.target.id === 'setting-push') return onPushToggle();
    if (event && event.target && event.target.id === 'setting-mute-all') return savePushMutes({ muteAll: event.target.checked });
    app.settings.notify = $('setting-notify').checked;
    app.settings.sound = $('setting-sound').checked;
    storage.set('settings', app.settings);
  }

  function openSettings() {
    renderPermission();
    const dialog = $('settings');
    if (typeof dialog.showModal === 'function') dialog.showModal();
    else dialog.setAttribute('open', '');
  }

  // ---------------------------------------------------------------------------
  // Composer: send, counter, auto-grow
  // ---------------------------------------------------------------------------

  function submitComposer() {
    const room = currentRoom();
    const input = $('composer-input');
    if (!room) return;
    const content = input.value.trim();
    const ready = ui.uploads.filter((upload) => upload.room === room.name);
    if (ready.some((upload) => upload.state === 'uploading')) {
      toast('Wait until the files are uploaded.');
      return;
    }
    if (!content && !ready.some((upload) => upload.attachment)) return;
    if (codePoints(content) > MAX_CONTENT) {
      toast(`Messages are limited to ${MAX_CONTENT} characters.`);
      return;
    }
    stopTyping();
    sendMessage(room, content);
    input.value = '';
    autoGrow();
    updateCounter();
  }

  function updateCounter() {
    const counter = $('composer-counter');
    const length = codePoints($('composer-input').value.trim());
    let text = '';
    if (length > MAX_CONTENT) text = `${length - MAX_CONTENT} characters over the ${MAX_CONTENT} limit`;
    else if (length >= COUNTER_FROM) text = `${MAX_CONTENT - length} characters left`;
    counter.classList.toggle('over', length > MAX_CONTENT);
    if (counter.textContent !== text) counter.textContent = text;
  }

  function autoGrow() {
    const input = $('composer-input');
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  // ---------------------------------------------------------------------------
  // @mention autocomplete: people of the room, its authors and DM partners
  // ---------------------------------------------------------------------------

  function mentionCandidates(room) {
    const names = new Set(room.presence.keys());
    for (let i = room.messages.length - 1, n = 0; i >= 0 && n < 500; i--, n++) names.add(room.messages[i].user);
    for (const name of app.rooms.keys()) {
      const partner = dmPartner(name);
      if (partner) names.add(partner);
    }
    names.delete(app.user);
    return [...names].sort(collator.compare);
  }

  function updateMention() {
    const input = $('composer-input');
    const room = currentRoom();
    const before = input.value.slice(0, input.selectionStart);
    const match = room && input.selectionStart === input.selectionEnd ? /(^|[^A-Za-z0-9_.-])@([A-Za-z0-9_.-]{0,32})$/.exec(before) : null;
    if (!match) {
      closeMention();
      return;
    }
    const query = match[2].toLowerCase();
    const options = mentionCandidates(room).filter((name) => name.toLowerCase().startsWith(query)).slice(0, 6);
    if (!options.length) {
      closeMention();
      return;
    }
    const previous = ui.mention && ui.mention.options[ui.mention.index];
    const index = Math.max(0, options.indexOf(previous));
    ui.mention = { start: before.length - match[2].length - 1, options, index };
    renderMention();
  }

  function renderMention() {
    const list = $('mention-list');
    const input = $('composer-input');
    if (!ui.mention) {
      list.hidden = true;
      list.replaceChildren();
      input.removeAttribute('aria-activedescendant');
      input.setAttribute('aria-expanded', 'false');
      return;
    }
    const items = ui.mention.options.map((name, index) => {
      const item = make('li', index === ui.mention.index ? 'mention-option active' : 'mention-option', `@${name}`);
      item.id = `mention-option-${index}`;
      item.dataset.user = name;
      item.setAttribute('role', 'option');
      item.setAttribute('aria-selected', String(index === ui.mention.index));
      item.addEventListener('mousedown', (event) => {
        event.preventDefault();
        pickMention(name);
      });
      return item;
    });
    list.replaceChildren(...items);
    list.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    input.setAttribute('aria-activedescendant', `mention-option-${ui.mention.index}`);
  }

  function closeMention() {
    if (!ui.mention) return;
    ui.mention = null;
    renderMention();
  }

  function pickMention(name) {
    const input = $('composer-input');
    const { start } = ui.mention;
    const after = input.value.slice(input.selectionStart);
    const text = `${input.value.slice(0, start)}@${name} `;
    input.value = text + after;
    input.setSelectionRange(text.length, text.length);
    closeMention();
    input.focus();
    updateCounter();
  }

  /** Arrow keys, Enter, Tab and Escape while the list is open; true when handled. */
  function onMentionKeydown(event) {
    const mention = ui.mention;
    switch (event.key) {
      case 'ArrowDown':
      case 'ArrowUp':
        mention.index = (mention.index + (event.key === 'ArrowDown' ? 1 : -1) + mention.options.length) % mention.options.length;
        renderMention();
        break;
      case 'Enter':
      case 'Tab':
        if (event.isComposing) return false;
        pickMention(mention.options[mention.index]);
        break;
      case 'Escape':
        closeMention();
        break;
      default:
        return false;
    }
    event.preventDefault();
    return true;
  }

  // ---------------------------------------------------------------------------
  // Search: every room we may read, newest first
  // ---------------------------------------------------------------------------

  function onSearchSubmit(event) {
    event.preventDefault();
    const text = $('search-input').value.trim();
    if (!text) {
      ui.search = null;
      renderSearch();
      return;
    }
    ui.search = { text, results: [], hasMore: false, loading: true, error: null };
    renderSearch();
    searchMore();
  }

  function searchMore() {
    const search = ui.search;
    if (!search) return;
    const data = { text: search.text, limit: SEARCH_PAGE };
    const last = search.results[search.results.length - 1];
    if (last) data.before = last.id;
    search.loading = true;
    renderSearch();
    request('search', data).then((page) => {
      if (ui.search !== search) return;
      search.results.push(...(Array.isArray(page.messages) ? page.messages.filter(isValidMessage) : []));
      search.hasMore = Boolean(page.hasMore);
      search.loading = false;
      renderSearch();
    }, (err) => {
      if (ui.search !== search) return;
      search.loading = false;
      search.error = err && err.message ? err.message : 'Search failed.';
      renderSearch();
    });
  }

  function renderSearch() {
    const list = $('search-results');
    const status = $('search-status');
    const search = ui.search;
    $('search-more').hidden = !search || !search.hasMore || search.loading;
    if (!search) {
      list.replaceChildren();
      status.textContent = '';
      return;
    }
    list.replaceChildren(...search.results.map((msg) => {
      const item = make('li', 'search-result');
      item.dataset.room = msg.room;
      item.dataset.seq = String(msg.seq);
      const open = make('button', 'search-open');
      open.type = 'button';
      const head = make('span', 'search-head');
      head.append(make('span', 'search-room', roomLabel(msg.room)), make('span', 'search-author', msg.user), timeNode(msg.timestamp));
      const text = make('span', 'search-text');
      appendMentions(text, msg.content.length > 200 ? `${msg.content.slice(0, 200)}…` : msg.content);
      open.append(head, text);
      open.addEventListener('click', () => openSearchResult(msg));
      item.append(open);
      return item;
    }));
    if (search.error) status.textContent = search.error;
    else if (search.loading) status.textContent = 'Searching…';
    else if (!search.results.length) status.textContent = `Nothing found for “${search.text}”.`;
    else status.textContent = `${search.results.length}${search.hasMore ? '+' : ''} found`;
  }

  function openSearchResult(msg) {
    if (app.rooms.has(msg.room)) switchRoom(msg.room);
    else joinRoomByName(dmPartner(msg.room) ? `@${dmPartner(msg.room)}` : msg.room);
    setSidebarOpen(false);
  }

  // ---------------------------------------------------------------------------
  // Keyboard and layout: shortcuts, sidebar toggle on narrow screens
  // ---------------------------------------------------------------------------

  function onComposerKeydown(event) {
    if (ui.mention && onMentionKeydown(event)) return;
    if (event.key === 'Escape' && ui.replyTo) {
      cancelReply();
      return;
    }
    if (event.key !== 'Enter' || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    submitComposer();
  }

  function onGlobalKeydown(event) {
    if (event.altKey && !event.ctrlKey && !event.metaKey && (event.key === 'ArrowUp' || event.key === 'ArrowDown')) {
      if ($('app').hidden) return;
      event.preventDefault();
      switchRoomBy(event.key === 'ArrowUp' ? -1 : 1);
    } else if (event.key === 'Escape' && document.body.classList.contains('sidebar-open')) {
      setSidebarOpen(false);
      $('sidebar-toggle').focus();
    }
  }

  function setSidebarOpen(open) {
    document.body.classList.toggle('sidebar-open', open);
    $('sidebar-toggle').setAttribute('aria-expanded', String(open));
    $('sidebar-backdrop').hidden = !open;
  }

  // ---------------------------------------------------------------------------
  // Session: sign in by name or token, sign out
  // ---------------------------------------------------------------------------

  function readToken() {
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get('token');
    if (fromUrl) {
      storage.set('token', fromUrl);
      params.delete('token');
      const query = params.toString();
      history.replaceState(null, '', `${location.pathname}${query ? `?${query}` : ''}${location.hash}`);
      return fromUrl;
    }
    return storage.get('token', null);
  }

  /** The token's claims; the signature is the server's business. */
  function tokenClaims(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === 'object' ? claims : {};
    } catch {
      return {};
    }
  }

  /** The user id is the token's `sub`. */
  function userFromToken(token) {
    const sub = tokenClaims(token).sub;
    return typeof sub === 'string' ? sub : null;
  }

  function startSession(user) {
    app.user = user;
    app.rooms.clear();
    for (const name of storage.get('rooms', [])) {
      if (isRoomName(name)) app.rooms.set(name, makeRoom(name));
    }
    const saved = storage.get('currentRoom', null);
    app.currentRoom = app.rooms.has(saved) ? saved : app.rooms.keys().next().value || null;
    restoreOutbox();
    $('login').hidden = true;
    $('app').hidden = false;
    connect();
    startPush();
    // Opened from a push's notification: that conversation.
    const linked = new URLSearchParams(location.search).get('room');
    if (linked && isRoomName(linked)) {
      addRoom(linked);
      switchRoom(linked);
    }
    scheduleRender({ toBottom: true });
  }

  function onLoginSubmit(event) {
    event.preventDefault();
    const name = $('name-input').value.trim();
    const error = $('name-error');
    if (!USER_RE.test(name)) {
      error.textContent = 'That name can’t be used. Use 1 to 32 characters: letters A–Z, digits, dot (.), underscore (_) or hyphen (-), with no spaces.';
      $('name-input').setAttribute('aria-invalid', 'true');
      $('name-input').focus();
      return;
    }
    clearFieldError('name-input', 'name-error');
    storage.set('name', name);
    storage.set('signedIn', true);
    unlockAudio();
    startSession(name);
    $('room-input').focus();
  }

  function signOut() {
    if (push.subscribed) disablePush();
    conn.wanted = false;
    stopTyping();
    dropSocket(1000, 'sign out');
    clearReconnectTimers();
    setConnection('offline');
    storage.remove('signedIn');
    storage.remove('token');
    $('name-input').value = storage.get('name', '');
    app.user = null;
    app.token = null;
    app.rooms.clear();
    app.currentRoom = null;
    ui.shownRoom = null;
    $('messages').replaceChildren();
    $('app').hidden = true;
    $('login').hidden = false;
    $('name-input').focus();
  }

  // ---------------------------------------------------------------------------
  // Wiring and start-up
  // ---------------------------------------------------------------------------

  function onRoomListClick(event) {
    const item = event.target.closest('li[data-room]');
    if (!item) return;
    if (event.target.closest('.room-leave')) leaveRoom(item.dataset.room);
    else switchRoom(item.dataset.room);
  }

  function onJoinSubmit(event) {
    event.preventDefault();
    const input = $('room-input');
    const message = joinRoomByName(input.value);
    if (message) {
      $('room-error').textContent = message;
      input.setAttribute('aria-invalid', 'true');
      return;
    }
    clearFieldError('room-input', 'room-error');
    input.value = '';
  }

  function clearFieldError(inputId, errorId) {
    $(inputId).removeAttribute('aria-invalid');
    $(errorId).textContent = '';
  }

  function onVisibilityOrFocus() {
    reportVisibility();
    const room = currentRoom();
    if (room && isRoomInView(room)) room.unread = 0;
    scheduleRender();
  }

  function bindEvents() {
    $('login-form').addEventListener('submit', onLoginSubmit);
    $('join-form').addEventListener('submit', onJoinSubmit);
    $('name-input').addEventListener('input', () => clearFieldError('name-input', 'name-error'));
    $('room-input').addEventListener('input', () => clearFieldError('room-input', 'room-error'));
    $('room-list').addEventListener('click', onRoomListClick);
    $('composer').addEventListener('submit', (event) => {
      event.preventDefault();
      submitComposer();
    });
    const input = $('composer-input');
    input.addEventListener('keydown', onComposerKeydown);
    input.addEventListener('input', () => {
      autoGrow();
      updateCounter();
      noteTyping();
      updateMention();
    });
    input.addEventListener('blur', () => {
      stopTyping();
      closeMention();
    });
    $('reply-cancel').addEventListener('click', cancelReply);
    $('call-button').addEventListener('click', () => {
      const room = currentRoom();
      const partner = room ? dmPartner(room.name) : null;
      if (partner) startCall(partner);
    });
    $('video-call-button').addEventListener('click', () => {
      const room = currentRoom();
      const partner = room ? dmPartner(room.name) : null;
      if (partner) startCall(partner, true);
    });
    $('call-camera').addEventListener('click', toggleCamera);
    $('call-accept').addEventListener('click', acceptCall);
    $('call-decline').addEventListener('click', declineCall);
    $('call-hangup').addEventListener('click', hangUp);
    $('call-mute').addEventListener('click', toggleMute);
    $('attach-button').addEventListener('click', () => $('file-input').click());
    $('file-input').addEventListener('change', (event) => {
      onFilesChosen([...event.target.files]);
      event.target.value = '';
    });
    input.addEventListener('paste', onComposerPaste);
    document.addEventListener('dragover', (event) => {
      if (!currentRoom() || !event.dataTransfer || ![...event.dataTransfer.types].includes('Files')) return;
      event.preventDefault();
      document.body.classList.add('dragging');
    });
    document.addEventListener('dragleave', (event) => {
      if (!event.relatedTarget) document.body.classList.remove('dragging');
    });
    document.addEventListener('drop', onDrop);
    // Tap the microphone to record (then send or cancel), or hold it and let go to send.
    $('record-start').addEventListener('pointerdown', (event) => {
      if (event.button !== 0) return;
      ui.holdStarted = Date.now();
      startRecording();
    });
    document.addEventListener('pointerup', () => {
      const held = ui.holdStarted !== null && ui.holdStarted !== undefined ? Date.now() - ui.holdStarted : 0;
      ui.holdStarted = null;
      if (held > HOLD_TO_RECORD_MS && ui.recorder) stopRecording(true);
    });
    $('record-start').addEventListener('click', (event) => {
      if (event.detail === 0) startRecording(); // the keyboard: Enter or Space
    });
    $('record-send').addEventListener('click', () => stopRecording(true));
    $('record-cancel').addEventListener('click', () => stopRecording(false));
    $('search-form').addEventListener('submit', onSearchSubmit);
    $('search-more').addEventListener('click', searchMore);
    $('messages').addEventListener('scroll', onTimelineScroll, { passive: true });
    $('new-messages').addEventListener('click', scrollToNewest);
    $('reconnect-now').addEventListener('click', () => {
      if (conn.socket) return;
      conn.attempt = 0;
      connect();
    });
    $('sidebar-toggle').addEventListener('click', () => {
      setSidebarOpen(!document.body.classList.contains('sidebar-open'));
    });
    $('sidebar-backdrop').addEventListener('click', () => setSidebarOpen(false));
    $('sign-out').addEventListener('click', signOut);
    $('settings-open').addEventListener('click', openSettings);
    $('settings').addEventListener('change', saveSettings);
    $('notify-permission').addEventListener('click', askPermission);
    $('mute-button').addEventListener('click', toggleRoomMute);
    if ('serviceWorker' in navigator) navigator.serviceWorker.addEventListener('message', onServiceWorkerMessage);
    document.addEventListener('keydown', onGlobalKeydown);
    document.addEventListener('pointerdown', unlockAudio, { once: true });
    document.addEventListener('keydown', unlockAudio, { once: true });
    document.addEventListener('visibilitychange', onVisibilityOrFocus);
    window.addEventListener('focus', onVisibilityOrFocus);
    window.addEventListener('online', onBrowserOnline);
    window.addEventListener('offline', onBrowserOffline);
  }

  /** Read-only helpers for automated tests. */
  function exposeTestHooks() {
    const api = Object.freeze({
      state() {
        const rooms = {};
        for (const room of app.rooms.values()) {
          rooms[room.name] = {
            lastSeq: room.lastSeq,
            count: room.messages.length,
            unread: room.unread,
            pending: room.outbox.length,
            joined: room.joined,
          };
        }
        const call = calling.current;
        return {
          connection: app.connection, user: app.user, currentRoom: app.currentRoom, rooms,
          call: call ? {
            state: call.state, peer: call.peer, ice: call.pc ? call.pc.iceConnectionState : null, video: Boolean(call.video),
            remoteVideo: $('call-remote').videoWidth || 0,
          } : null,
          push: {
            worker: Boolean(push.registration), subscribed: push.subscribed, muteAll: push.muteAll, muted: [...push.muted].sort(),
            visible: conn.reportedVisible, alerts: alerts.count,
          },
        };
      },
    });
    Object.defineProperty(window, 'parley', { value: api, writable: false, configurable: false });
  }

  function boot() {
    bindEvents();
    loadSettings();
    exposeTestHooks();
    renderConnection();
    app.token = readToken();
    if (app.token) {
      const roles = tokenClaims(app.token).roles;
      app.roles = Array.isArray(roles) ? roles.filter((role) => typeof role === 'string') : [];
      startSession(userFromToken(app.token));
      return;
    }
    const name = storage.get('name', null);
    const validName = typeof name === 'string' && USER_RE.test(name);
    if (validName && storage.get('signedIn', false)) {
      startSession(name);
      return;
    }
    if (validName) $('name-input').value = name;
    $('name-input').focus();
  }

  boot();
})();
