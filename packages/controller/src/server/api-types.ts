// The operator API's request and response bodies (docs/api.md), one set of types for the routes
// that send them and the CLI that reads them. Types only: the CLI loads none of the server with them.
import type { BakeRecord } from '../bakes/bakes.js';
import type { HealthSpec, Hooks, ProcessSpec, ReleaseSummary, ServiceSpec } from '@kiln/shared';
import type { z } from 'zod';
import type { BatchSpec, Deployment, DeploymentCreate, Fleet } from '../fleets/fleet-model.js';
import type { ConfigVersion, ConfigView } from '../fleets/fleet-config.js';
import type { FleetSummary, InstanceRow } from '../fleets/fleet-view.js';
import type { ImageInfo, InstanceInfo } from '../providers/provider.js';
import type { FleetDeleted } from '../rollouts/fleet-delete.js';

/** A fleet as the API shows it: never its credential digest or salt. */
export type PublicFleet = Omit<Fleet, 'agentCredentialSha256' | 'credentialSalt'> & {
  /** where the fleet's balancer takes requests (`http://127.0.0.1:PORT/` for HAProxy, the target group ARN for ELBv2); null: none */
  endpoint: string | null;
};

/** `POST /v1/fleets`: the fleet, and the credential its agents present (shown this once). */
export interface FleetCreated {
  fleet: PublicFleet;
  agentCredential: string;
}
/** `GET /v1/fleets` */
export interface FleetList {
  fleets: PublicFleet[];
}
/** `GET /v1/fleets/:name` */
export interface FleetBody {
  fleet: PublicFleet;
}
/** `GET /v1/fleets/:name/instances` */
export interface FleetInstances {
  fleet: PublicFleet;
  instances: InstanceRow[];
  summary: FleetSummary;
}
/** `GET /v1/fleets/:name/drift` */
export interface FleetDrift {
  fleet: PublicFleet;
  drifted: InstanceRow[];
  summary: FleetSummary;
}
/** `GET /v1/fleets/:name/config`, `POST /v1/fleets/:name/config`: a config version, secrets as their references */
export interface ConfigBody {
  config: ConfigView;
}
/** `GET /v1/fleets/:name/config/history`: every version, oldest first */
export interface ConfigHistory {
  versions: ConfigVersion[];
}
/** A deployment started (`POST /v1/deployments`, a fleet's rollback or heal), read or cancelled. */
export interface DeploymentBody {
  deployment: Deployment;
}
/** `GET /v1/deployments` */
export interface DeploymentList {
  deployments: Deployment[];
}
/** `POST /v1/bakes`, `GET /v1/bakes/:id` */
export interface BakeBody {
  bake: BakeRecord;
}
/** `GET /v1/images` */
export interface ImageList {
  provider: string;
  images: ImageInfo[];
}
/** `GET /v1/instances` */
export interface InstanceList {
  provider: string;
  instances: InstanceInfo[];
}
/** `GET /v1/releases/:app` */
export interface ReleaseList {
  releases: ReleaseSummary[];
}
/** `GET /v1/releases/:app/:version` */
export interface ReleaseDetail {
  release: ReleaseSummary;
  manifestSha256: string;
  service: ServiceSpec;
  health: HealthSpec;
  processes: Record<string, ProcessSpec>;
  hooks: Hooks;
  persist: string[];
}
/** `GET /v1/fleets/:name/logs`: one JSON object a line, a line of output or an instance's stream that failed. */
export type LogItem = { instance: string; process: string; line: string } | { instance: string; error: { code: string; message: string } };
/** The rollout fields of a deployment, rollback or heal request; absent ones take the API's defaults. */
export type RolloutFields = Pick<z.input<typeof DeploymentCreate>, 'batch' | 'maxFailures' | 'healthTimeoutMs'>;
export type GateFields = Pick<z.input<typeof DeploymentCreate>, 'canary' | 'canaryWaitMs' | 'soakMs' | 'maxErrorRate' | 'alarms'>;

export type { BakeRecord, BatchSpec, ConfigVersion, ConfigView, Deployment, FleetDeleted, FleetSummary, ImageInfo, InstanceInfo, InstanceRow };
