/**
 * Configuration of vulnerability scan sources (`scan:` in the config file). Filled in by the scan capability.
 */
import { z } from 'zod';

export const scanSchema = z.object({}).loose();

export type ScanConfig = z.output<typeof scanSchema>;
