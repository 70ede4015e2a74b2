/** A secret never sits inline in the config file: it comes from an environment variable or a file (load.ts reads it). */
import { z } from 'zod';

export const secretRef = z
  .object({ env: z.string().min(1).optional(), file: z.string().min(1).optional() })
  .strict()
  .refine((s) => (s.env === undefined) !== (s.file === undefined), 'give exactly one of env or file');
