// docs/api.md lists every field the API returns. A real controller on the process provider and real
// S3 is given real state (a fleet baked and hotfixed, rolled back, healed, an instance gone away, a
// standalone bake, a second fleet deleted); every route it serves is called, each JSON answer walked,
// and every field name in it must appear in docs/api.md as `name` in backticks.
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProcessProvider, type Provider } from '@kiln/controller';
import { closeProcessStack, startController, testLaunch, type TestController } from '../helpers/controller.js';
import { makeKeys, pushReleases, quietLog, tempDir, type Keys } from '../helpers/release.js';
import { startS3, type S3Fixture } from '../helpers/s3.js';
import { until } from '../helpers/agent.js';

/**
 * Objects whose keys are data, not fields, by their path in a body (`[]`: any element of an
 * array): a deployment's `instances`, keyed by instance id; provider `tags`, keyed by tag name
 * (`kiln:fleet`, …; docs/providers.md lists kiln's); a release's `service.env` and a fleet config's
 * `values` and `secrets`, keyed by variable name. Their values are still walked, under `{key}`.
 */
const KEYED_BY_DATA = [/^deployments?(\[\])?\.instances$/, /^(images|instances)\[\]\.tags$/, /^service\.env$/, /^config\.(values|secrets)$/];

/** Fields the state built here cannot produce: `region` (images and bake copies on a provider with regions, ec2). */
const NOT_PRODUCED_HERE = ['region'];

/** Every field path in a JSON body (`deployment.batches`, `instances[].drift`, `deployment.instances.{key}.step`). */
function fieldPaths(value: unknown, at = '', out: string[] = []): string[] {
  if (Array.isArray(value)) for (const v of value) fieldPaths(v, `${at}[]`, out);
  else if (value && typeof value === 'object') {
    const byData = KEYED_BY_DATA.some((re) => re.test(at));
    for (const [k, v] of Object.entries(value)) {
      const p = byData ? `${at}.{key}` : at ? `${at}.${k}` : k;
      if (!byData) out.push(p);
      fieldPaths(v, p, out);
    }
  }
  return out;
}

/** The names docs/api.md shows as `name`. */
const documentedNames = (doc: string) => new Set([...doc.matchAll(/`([A-Za-z_][A-Za-z0-9_]*)`/g)].map((m) => m[1]!));

/** `ROUTE: path` for each field name of the answers that the doc does not show in backticks. */
function undocumented(doc: string, answers: Array<{ route: string; body: unknown }>): string[] {
  const names = documentedNames(doc);
  // Each missing name once, where it was first met.
  const missing = new Map<string, string>();
  for (const { route, body } of answers) {
    for (const p of fieldPaths(body)) {
      const name = p.slice(p.lastIndexOf('.') + 1).replace(/(\[\])+$/, '');
      if (!names.has(name) && !missing.has(name)) missing.set(name, `${route}: ${p}`);
    }
  }
  for (const name of NOT_PRODUCED_HERE) if (!names.has(name) && !missing.has(name)) missing.set(name, `(not produced here): ${name}`);
  return [...missing.values()];
}

/** The server's routes as `METHOD /path`, from fastify's route tree (HEAD, which fastify adds to each GET, left out). */
function registeredRoutes(tree: string): string[] {
  const stack: string[] = [];
  const routes: string[] = [];
  for (const line of tree.split('\n')) {
    const m = /^([│├└─ ]*?)(\/\S*)(?: \(([^)]*)\))?$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    const path = (stack[depth - 1] ?? '') + m[2]!;
    stack[depth] = path;
    for (const method of (m[3] ?? '').split(', ').filter((x) => x && x !== 'HEAD')) routes.push(`${method} ${path}`);
  }
  return routes.sort();
}

let s3: S3Fixture;
let keys: Keys;
let ctl: TestController;
let provider: Provider;
let dir: string;
/** Each answer by the route pattern that gave it. */
const answers: Array<{ route: string; body: unknown }> = [];

/** Calls `METHOD pattern` with `:params` filled in; records and returns the answer, which must have `status`. */
async function call(route: string, params: Record<string, string>, status: number, body?: unknown, query = ''): Promise<any> {
  const [method, pattern] = route.split(' ') as [string, string];
  const url = pattern.replace(/:(\w+)/g, (_, p: string) => encodeURIComponent(params[p]!)) + query;
  const res = await ctl.api(method, url, body);
  expect(res.status, `${method} ${url}: ${JSON.stringify(res.body)}`).toBe(status);
  answers.push({ route, body: res.body });
  return res.body;
}

/** Polls a deployment (recorded as its GET) until it is over; it must have succeeded. */
async function finished(id: string): Promise<any> {
  let d: any;
  await until(`deployment ${id} over`, async () => !['running', 'paused'].includes((d = (await call('GET /v1/deployments/:id', { id }, 200)).deployment).state), 30_000);
  expect(d.state, JSON.stringify(d)).toBe('succeeded');
  return d;
}

beforeAll(async () => {
  s3 = await startS3();
  keys = makeKeys();
  dir = await tempDir('kiln-api-fields-');
  provider = createProcessProvider({ dir, log: quietLog() });
  ctl = await startController({
    s3,
    keys,
    launch: testLaunch(provider, s3),
  });
  await pushReleases({ store: s3.store, keys }, { '1.0.0': { channel: 'stable' }, '2.0.0': {} });
}, 60_000);

afterAll(() => closeProcessStack({ ctl, provider, s3, dir }), 60_000);

describe('docs/api.md', () => {
  it('names every field every route returns', { timeout: 60_000 }, async () => {
    const web = { name: 'web' };
    // A fleet baked at 1.0.0, hotfixed to 2.0.0, rolled back (a hotfix: no standby group yet), healed (a new group).
    await call('POST /v1/fleets', {}, 201, { name: 'web', app: 'web', channel: 'stable', provider: 'process', size: 1 });
    const bake = await call('POST /v1/deployments', {}, 201, { fleet: 'web', version: '1.0.0', strategy: 'bake', healthTimeoutMs: 20_000 });
    const baked = await finished(bake.deployment.id);
    const hotfix = await call('POST /v1/deployments', {}, 201, { fleet: 'web', version: '2.0.0', batch: { count: 1 }, healthTimeoutMs: 20_000, soakMs: 200 });
    const soaked = await finished(hotfix.deployment.id);
    expect(soaked.soaks).toHaveLength(1);
    // Promote and abort act on a paused canary only: this one is over.
    await call('POST /v1/deployments/:id/promote', { id: hotfix.deployment.id }, 409);
    await call('POST /v1/deployments/:id/abort', { id: hotfix.deployment.id }, 409);
    const drift = await call('GET /v1/fleets/:name/drift', web, 200);
    expect(drift.drifted.map((r: any) => r.drift)).toEqual(['off-image']);
    const rollback = await call('POST /v1/fleets/:name/rollback', web, 201, {});
    await finished(rollback.deployment.id);
    // A cancel of a deployment that is over returns it as it is.
    await call('POST /v1/deployments/:id/cancel', { id: rollback.deployment.id }, 200);
    const heal = await call('POST /v1/fleets/:name/heal', web, 201, { healthTimeoutMs: 20_000 });
    const healed = await finished(heal.deployment.id);
    await call('PATCH /v1/fleets/:name', web, 200, { size: 1 });

    // A standalone bake of what the fleet's bake made: found by its bake key.
    const b = await call('POST /v1/bakes', {}, 201, { app: 'web', version: '1.0.0', baseImage: 'img-base' });
    await until('the bake over', async () => (await call('GET /v1/bakes/:id', { id: b.bake.id }, 200)).bake.state !== 'running', 30_000);

    // The live instance gone away: its row is unreachable, with what it last reported.
    const [gone] = (await call('GET /v1/fleets/:name', web, 200)).fleet.groups.find((g: any) => g.state === 'live').instances;
    // Its app's output: one line (the supervisor's own "app started" at least), one JSON object; a bad query.
    const logs = await call('GET /v1/fleets/:name/logs', web, 200, undefined, `?instance=${gone}&lines=1`);
    expect(logs).toMatchObject({ instance: gone, process: 'web', line: expect.any(String) });
    await call('GET /v1/fleets/:name/logs', web, 400, undefined, '?lines=many');
    await provider.stop([gone], { timeoutMs: 10_000 });
    await until(`${gone} unreachable`, () => ctl.server.kiln.hub.get(gone)?.connected === false);
    const status = await call('GET /v1/fleets/:name/instances', web, 200);
    expect(status.instances.map((r: any) => [r.instanceId, r.drift, r.installed])).toEqual([[gone, 'unreachable', '1.0.0']]);

    // The fleet's config: none yet, two versions (a value and a secret by reference, then an unset), their history.
    await call('GET /v1/fleets/:name/config', web, 404);
    await call('POST /v1/fleets/:name/config', web, 201, { set: { LOG_LEVEL: 'debug' }, secrets: { DB_PASSWORD: 'aws-ssm:/web/db-password' } });
    await call('POST /v1/fleets/:name/config', web, 201, { unset: ['LOG_LEVEL'] });
    await call('GET /v1/fleets/:name/config', web, 200);
    const configHistory = await call('GET /v1/fleets/:name/config/history', web, 200);
    expect(configHistory.versions.map((v: any) => [v.seq, v.set, v.unset])).toEqual([[1, ['DB_PASSWORD', 'LOG_LEVEL'], []], [2, [], ['LOG_LEVEL']]]);
    // A deployment of that config (its target names it): its one instance is away, so it fails at once.
    const configDeploy = await call('POST /v1/deployments', {}, 201, { fleet: 'web', config: true });
    await until('the config deployment over', async () => (await call('GET /v1/deployments/:id', { id: configDeploy.deployment.id }, 200)).deployment.state !== 'running', 30_000);
    expect(configDeploy.deployment.release.config).toMatchObject({ fleet: 'web', seq: 2 });

    // A second fleet, deleted.
    await call('POST /v1/fleets', {}, 201, { name: 'api', app: 'web' });
    await call('DELETE /v1/fleets/:name', { name: 'api' }, 200);

    await call('GET /v1/health', {}, 200);
    await call('GET /v1/fleets', {}, 200);
    await call('GET /v1/deployments', {}, 200);
    await call('GET /v1/deployments', {}, 200, undefined, '?fleet=web');
    await call('GET /v1/images', {}, 200);
    await call('GET /v1/instances', {}, 200);
    await call('GET /v1/releases/:app', { app: 'web' }, 200);
    await call('GET /v1/releases/:app/:version', { app: 'web', version: '1.0.0' }, 200);
    await call('GET /v1/fleets/:name', { name: 'nope' }, 404); // the error body

    // What the walk must have seen for the check to mean something: each kind of record, filled in.
    expect(baked.phases.length).toBeGreaterThan(0);
    expect(Object.keys(healed.instances).length).toBeGreaterThan(0);
    expect(drift.fleet.history.length).toBeGreaterThan(0);
    expect(answers.some((a) => a.route === 'GET /v1/images' && (a.body as any).images.length > 0)).toBe(true);

    // Every route the server has was called (a new route fails here until this test calls it).
    const called = [...new Set(answers.map((a) => a.route))].sort();
    expect(called).toEqual(registeredRoutes(ctl.server.printRoutes({ commonPrefix: false })));

    // What derives or checks an agent credential never leaves the controller (the salt was in every fleet answer).
    const secretish = answers.flatMap((a) => fieldPaths(a.body).filter((p) => /(^|\.)(agentCredentialSha256|credentialSalt)$/.test(p)).map((p) => `${a.route}: ${p}`));
    expect(secretish).toEqual([]);

    const doc = await readFile(new URL('../../docs/api.md', import.meta.url), 'utf8');
    expect(undocumented(doc, answers), 'fields docs/api.md does not name as `field` (ROUTE: path)').toEqual([]);
    // The check itself: a field taken out of the doc is reported, with its route and path.
    expect(undocumented(doc.replaceAll('`offImage`', 'offImage'), answers)).toEqual(['GET /v1/fleets/:name/drift: summary.offImage']);
  });
});
