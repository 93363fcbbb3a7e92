import { AppName, VersionName, listReleases, showRelease, type PublicKey, type ReleaseStore } from '@kiln/shared';
import type { FastifyPluginAsync } from 'fastify';
import { z } from 'zod';
import { parseInput } from '../../fleets/fleet-model.js';
import type { ReleaseDetail, ReleaseList } from '../api-types.js';

const App = z.strictObject({ app: AppName });
const AppVersion = App.extend({ version: VersionName });

export const releaseRoutes: FastifyPluginAsync<{ store: ReleaseStore; keys: PublicKey[] }> = async (app, { store, keys }) => {
  app.get<{ Reply: ReleaseList }>('/v1/releases/:app', async (req) => ({ releases: await listReleases(store, parseInput(App, req.params, 'the app').app, keys) }));
  app.get<{ Reply: ReleaseDetail }>('/v1/releases/:app/:version', async (req) => {
    const p = parseInput(AppVersion, req.params, 'the release');
    const { summary, manifest, manifestSha256 } = await showRelease(store, p.app, p.version, keys);
    return { release: summary, manifestSha256, service: manifest.service, health: manifest.health, processes: manifest.processes ?? {}, hooks: manifest.hooks ?? {}, persist: manifest.persist ?? [] };
  });
};
