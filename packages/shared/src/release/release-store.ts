import type { S3Client } from '@aws-sdk/client-s3';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { KilnError, isKilnError } from '../errors/kiln-error.js';
import { checkName } from './names.js';
import { ObjectName } from './release-schema.js';
import { s3Error } from '../s3/s3-errors.js';
import { s3Objects } from '../s3/s3-objects.js';
import { s3Sdk, s3Storage } from '../s3/s3-sdk.js';

export interface SignedObject {
  bytes: Buffer;
  sig: Buffer;
}

/** The S3 layout of docs/release-format.md; every key is built here and nowhere else. */
export interface ReleaseStore {
  readonly bucket: string;
  readonly prefix: string;
  artifactKey(app: string, version: string): string;
  getManifest(app: string, version: string): Promise<SignedObject>;
  manifestExists(app: string, version: string): Promise<boolean>;
  putManifest(app: string, version: string, obj: SignedObject): Promise<void>;
  putArtifact(key: string, body: Readable, onProgress?: (loaded: number) => void): Promise<void>;
  getArtifact(key: string, signal?: AbortSignal): Promise<Readable>;
  listVersions(app: string): Promise<string[]>;
  getPointer(app: string, channel: string): Promise<SignedObject>;
  putPointer(app: string, channel: string, obj: SignedObject): Promise<void>;
  /** Removes a channel pointer (a bake's private channel, once the bake is over). */
  removePointer(app: string, channel: string): Promise<void>;
  /** The channels of an app that have a pointer. */
  listChannels(app: string): Promise<string[]>;
  /** A format 2 content object's key: `objects/<app>/<name>` (a large file's sha256, or a pack). */
  objectKey(app: string, name: string): string;
  /** Uploads a content object (a file, multipart when large). */
  putObject(key: string, file: string, size: number): Promise<void>;
  /** Bytes [start, end] (inclusive) of a content object, and how many the endpoint says it sends. */
  getRange(key: string, start: number, end: number, signal?: AbortSignal): Promise<{ body: Readable; length: number | undefined }>;
  objectExists(key: string): Promise<boolean>;
  /** The app's content objects with their sizes and upload times (ms; when the endpoint gives them). */
  listObjects(app: string): Promise<Array<{ name: string; size: number; modifiedAt?: number | undefined }>>;
  removeObject(key: string): Promise<void>;
  /** Deletes a release: its manifest first (so it is gone before what it names), then its signature and artifact. */
  removeRelease(app: string, version: string): Promise<void>;
}

export function createReleaseStore(client: S3Client, bucket: string, prefix = ''): ReleaseStore {
  const releaseDir = (app: string, version: string) => `${prefix}releases/${checkName('app', app)}/${checkName('version', version)}/`;
  const pointerKey = (app: string, channel: string) => `${prefix}channels/${checkName('app', app)}/${checkName('channel', channel)}.json`;

  const objectsDir = (app: string) => `${prefix}objects/${checkName('app', app)}/`;

  const { getSmall, put, list, listSized, remove, where } = s3Objects(client, bucket);
  const { GetObjectCommand, HeadObjectCommand } = s3Sdk();

  async function exists(key: string): Promise<boolean> {
    try {
      await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      return true;
    } catch (err) {
      const mapped = s3Error(err, where(key));
      if (mapped.code === 'KILN_RELEASE_NOT_FOUND') return false;
      throw mapped;
    }
  }

  async function upload(key: string, body: Readable, contentType: string, onProgress?: (loaded: number) => void): Promise<void> {
    try {
      const { Upload } = s3Storage();
      const up = new Upload({ client, params: { Bucket: bucket, Key: key, Body: body, ContentType: contentType }, partSize: 8 * 1024 * 1024, queueSize: 4 });
      if (onProgress) up.on('httpUploadProgress', (p) => onProgress(p.loaded ?? 0));
      await up.done();
    } catch (err) {
      throw s3Error(err, where(key));
    }
  }

  /** A signed object; an absent one is KILN_RELEASE_NOT_FOUND saying what to do (`absent`). */
  async function getSigned(key: string, absent: string): Promise<SignedObject> {
    try {
      const [bytes, sig] = await Promise.all([getSmall(key), getSmall(`${key}.sig`)]);
      return { bytes, sig };
    } catch (err) {
      if (!isKilnError(err, 'KILN_RELEASE_NOT_FOUND')) throw err;
      throw new KilnError('KILN_RELEASE_NOT_FOUND', `${absent} (no ${where(key)})`, { cause: err });
    }
  }

  return {
    bucket,
    prefix,
    artifactKey: (app, version) => `${releaseDir(app, version)}artifact.tar.gz`,
    getManifest: (app, version) => getSigned(`${releaseDir(app, version)}manifest.json`, `no release ${app} ${version}: \`kiln release list ${app}\` lists the published ones`),
    manifestExists: (app, version) => exists(`${releaseDir(app, version)}manifest.json`),
    async putManifest(app, version, obj) {
      const key = `${releaseDir(app, version)}manifest.json`;
      // The signature goes first: a manifest is visible only once it can be verified.
      await put(`${key}.sig`, obj.sig, 'application/json');
      await put(key, obj.bytes, 'application/json', true);
    },
    putArtifact: (key, body, onProgress) => upload(key, body, 'application/gzip', onProgress),
    async getArtifact(key, signal) {
      try {
        const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }), signal ? { abortSignal: signal } : {});
        return res.Body as Readable;
      } catch (err) {
        throw s3Error(err, where(key));
      }
    },
    async listVersions(app) {
      const base = `${prefix}releases/${checkName('app', app)}/`;
      return (await list(base, '/')).map((p) => p.slice(base.length, -1));
    },
    getPointer: (app, channel) => getSigned(pointerKey(app, channel), `channel ${channel} of ${app} points to no release yet: point it at one with \`kiln release promote ${app} VERSION --channel ${channel}\``),
    async putPointer(app, channel, obj) {
      const key = pointerKey(app, channel);
      await put(`${key}.sig`, obj.sig, 'application/json');
      await put(key, obj.bytes, 'application/json');
    },
    async removePointer(app, channel) {
      const key = pointerKey(app, channel);
      await remove(key);
      await remove(`${key}.sig`);
    },
    async listChannels(app) {
      const base = `${prefix}channels/${checkName('app', app)}/`;
      return (await list(base)).filter((k) => k.endsWith('.json')).map((k) => k.slice(base.length, -'.json'.length));
    },
    objectKey: (app, name) => `${objectsDir(app)}${ObjectName.parse(name)}`,
    async putObject(key, file, size) {
      if (size <= 8 * 1024 * 1024) await put(key, await readFile(file), 'application/octet-stream');
      else await upload(key, createReadStream(file), 'application/octet-stream');
    },
    async getRange(key, start, end, signal) {
      try {
        const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${start}-${end}` }), signal ? { abortSignal: signal } : {});
        return { body: res.Body as Readable, length: res.ContentLength };
      } catch (err) {
        throw s3Error(err, where(key));
      }
    },
    objectExists: exists,
    async listObjects(app) {
      const base = objectsDir(app);
      return (await listSized(base)).map((o) => ({ name: o.key.slice(base.length), size: o.size, modifiedAt: o.modifiedAt }));
    },
    removeObject: remove,
    async removeRelease(app, version) {
      const dir = releaseDir(app, version);
      await remove(`${dir}manifest.json`);
      await remove(`${dir}manifest.json.sig`);
      await remove(`${dir}artifact.tar.gz`);
    },
  };
}
