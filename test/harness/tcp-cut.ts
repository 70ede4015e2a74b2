/**
 * Test harness: a loopback TCP relay in front of one server (Redis, a registry) that a test can cut and restore, to
 * take one replica off a backend while the others keep it: cut() destroys every relayed connection and refuses new
 * ones (accepted and closed at once, as a dropped route would look to a client that reconnects); restore() relays
 * again. Every socket is destroyed on stop().
 */
import { createConnection, createServer, type Socket } from 'node:net';

export interface TcpCut {
  port: number;
  cut(): void;
  restore(): void;
  stop(): Promise<void>;
}

export async function startTcpCut(targetPort: number): Promise<TcpCut> {
  let open = true;
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
  };
  const server = createServer((client) => {
    track(client);
    if (!open) {
      client.destroy();
      return;
    }
    const up = createConnection({ host: '127.0.0.1', port: targetPort });
    track(up);
    client.pipe(up);
    up.pipe(client);
    client.once('close', () => up.destroy());
    up.once('close', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    port,
    cut: () => {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore: () => {
      open = true;
    },
    stop: async () => {
      open = false;
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
