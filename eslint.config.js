// Lint: typescript-eslint's recommended rules with type information (recommendedTypeChecked), over the sources
// and the tests together (tsconfig.test.json, which extends tsconfig.json and includes both); the plain-JS bench and scripts get the recommended rules
// without type information. Run by `npm test` (npm run lint).
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['dist/', 'coverage/', 'bench/out/', 'data/'] },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { project: ['./tsconfig.test.json'], tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // A `let` assigned once, later, and read before that by a closure (a late-bound reference such as the app that
      // exists only after the policy loaded) cannot be a const.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // The code's convention for a deliberately unused name: a leading underscore (a property dropped by a rest
      // destructuring, an interface's parameter an implementation ignores).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: globals.node },
  },
);
