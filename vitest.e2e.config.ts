import { defineConfig } from 'vitest/config';

// End-to-end journeys against the cluster named by KUBECONFIG (kind, or the local single-node cluster).
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.test.ts'],
    fileParallelism: false,
    testTimeout: 300_000,
    hookTimeout: 300_000,
  },
});
