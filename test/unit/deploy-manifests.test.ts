/**
 * The shipped Kubernetes manifests: each ConfigMap's portcullis.yaml passes the config schema, and the probes and
 * the Prometheus scrape target the operator listener, so they keep working when the registry listener asks for
 * client certificates (a kubelet probe or a scrape has none).
 */
import { readFile } from 'node:fs/promises';
import { describe, expect, test } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { parseConfig } from '../../src/config/load.js';

interface Port {
  name?: string;
  containerPort?: number;
  port?: number;
  targetPort?: number | string;
}
interface Probe {
  httpGet: { port: number | string; scheme?: string };
}
interface Container {
  name: string;
  ports: Port[];
  readinessProbe: Probe;
  livenessProbe: Probe;
}
interface Doc {
  kind: string;
  data?: Record<string, string>;
  spec: {
    template: { metadata: { annotations?: Record<string, string> }; spec: { containers: Container[] } };
    ports: Port[];
    endpoints: Array<{ port: string; authorization?: unknown }>;
  };
}

async function docs(file: string): Promise<Doc[]> {
  return parseAllDocuments(await readFile(file, 'utf8')).map((d) => d.toJS() as Doc);
}

describe.each(['deploy/kubernetes/deployment.yaml', 'deploy/kubernetes/daemonset.yaml'])('%s', (file) => {
  test('probes and the scrape use the operator listener', async () => {
    const all = await docs(file);
    const cm = all.find((d) => d.kind === 'ConfigMap');
    const config = parseConfig(cm!.data!['portcullis.yaml']!, `${file}: portcullis.yaml`, { GHCR_TOKEN: 'x' });
    expect(config.operatorListen).toBeDefined();
    const operatorPort = Number(config.operatorListen!.split(':').pop());
    const workload = all.find((d) => d.kind === 'Deployment' || d.kind === 'DaemonSet')!;
    const container = workload.spec.template.spec.containers.find((c) => c.name === 'portcullis')!;
    const portOf = (p: number | string | undefined): number | undefined =>
      typeof p === 'string' ? container.ports.find((x) => x.name === p)?.containerPort : p;
    for (const probe of [container.readinessProbe, container.livenessProbe]) {
      expect(portOf(probe.httpGet.port)).toBe(operatorPort);
      expect(probe.httpGet.scheme ?? 'HTTP').toBe('HTTP');
    }
    const monitor = all.find((d) => d.kind === 'ServiceMonitor');
    if (monitor) {
      const svc = all.find((d) => d.kind === 'Service')!;
      const endpoint = monitor.spec.endpoints[0]!;
      expect(portOf(svc.spec.ports.find((p) => p.name === endpoint.port)?.targetPort)).toBe(operatorPort);
      expect(endpoint.authorization).toBeDefined();
    } else {
      expect(Number(workload.spec.template.metadata.annotations?.['prometheus.io/port'])).toBe(operatorPort);
    }
  });
});
