import { createServer } from 'node:net';

/** A port free on 127.0.0.1 right now (the kernel's pick), for an app or agent started next. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/** Resolves when `port` on 127.0.0.1 can be listened on now; rejects with the listen error (EADDRINUSE) when not. */
export async function checkPortFree(port: number): Promise<void> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, '127.0.0.1', resolve);
  });
  await new Promise((resolve) => srv.close(resolve));
}
