// The operator API's request and response bodies (docs/api.md), one set of types for the routes
// that send them and the CLI that reads them. Types only: the CLI loads none of the server with them.
import type { BakeRecord } from '../bakes/bakes.js';
import type { BatchSpec, Deployment, Fleet } from '../fleets/fleet-model.js';
import type { FleetSummary, InstanceRow } from '../fleets/fleet-view.js';
import type { ImageInfo, InstanceInfo } from '../providers/provider.js';

/** A fleet as the API shows it: never its credential digest. */
export type PublicFleet = Omit<Fleet, 'agentCredentialSha256'>;

export type { BakeRecord, BatchSpec, Deployment, FleetSummary, ImageInfo, InstanceInfo, InstanceRow };
