/**
 * The outcome codes are a contract with policy authors: every code declared in src/policy/codes.ts is documented in
 * the README (which lists them for the policy input), so a new code cannot ship unannounced.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SCAN_CODES, SIGNATURE_CODES } from '../../src/policy/codes.js';

const readme = readFileSync('README.md', 'utf8');

describe('outcome codes', () => {
  it('every signature and scan code is named in the README', () => {
    const missing = [...Object.keys(SIGNATURE_CODES), ...Object.keys(SCAN_CODES)].filter((c) => !readme.includes(`\`${c}\``));
    expect(missing).toEqual([]);
  });
});
