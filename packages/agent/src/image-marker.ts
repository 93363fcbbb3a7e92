import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { AppName, KilnError, ReleaseRef, readJsonFile, writeFileAtomic } from '@kiln/shared';
import { z } from 'zod';

/** `/etc/kiln/image.json`: written when an image is baked, read by every instance launched from it. */
export const ImageMarker = z.strictObject({
  schema: z.literal(1),
  app: AppName,
  /** the release baked into the image */
  release: ReleaseRef.nullable(),
  bakedAt: z.string(),
});
export type ImageMarker = z.infer<typeof ImageMarker>;

export const imageMarkerPath = (root: string) => path.join(path.resolve(root), 'etc/kiln/image.json');

/** The image's marker, or undefined on a plain base image. A marker that does not parse, or is for another app, is an error. */
export async function readImageMarker(root: string, app: string): Promise<ImageMarker | undefined> {
  const file = imageMarkerPath(root);
  const marker = await readJsonFile(file, ImageMarker, { code: 'KILN_STATE_INVALID', unreadable: 'KILN_STATE_INVALID', what: 'the image marker' });
  if (!marker) return undefined;
  if (marker.app !== app) throw new KilnError('KILN_STATE_INVALID', `the image marker ${file} is for app ${marker.app}, but this agent serves ${app}`);
  return marker;
}

export async function writeImageMarker(root: string, app: string, release: ReleaseRef | null, now: Date): Promise<ImageMarker> {
  const marker: ImageMarker = { schema: 1, app, release, bakedAt: now.toISOString() };
  await mkdir(path.dirname(imageMarkerPath(root)), { recursive: true });
  await writeFileAtomic(imageMarkerPath(root), JSON.stringify(marker, null, 2) + '\n');
  return marker;
}
