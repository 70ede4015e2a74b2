/**
 * Configuration of signature authorities (`signatures:` in the config file). Filled in by the signatures
 * capability; until then the section is accepted but must be empty.
 */
import { z } from 'zod';

export const signaturesSchema = z
  .object({
    authorities: z.array(z.object({ name: z.string() }).loose()).default([]),
  })
  .strict();

export type SignaturesConfig = z.output<typeof signaturesSchema>;
