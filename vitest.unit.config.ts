import { defineConfig } from 'vitest/config';

// Unit tests: pure functions and fakes, no root, no kernel, no cluster. Fast.
export default defineConfig({
  test: {
    include: ['{api,runtime,operator,sidecar,native,bench,e2e,charts}/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**', '**/*.int.test.ts', '**/*.kernel.test.ts', '**/*.e2e.test.ts'],
    testTimeout: 20_000,
  },
});
