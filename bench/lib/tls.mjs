/**
 * The `tls` phase (issue 16, item 5): TLS on both sides. A bench CA (openssl, EC P-256) signs one certificate for
 * 127.0.0.1; a second Distribution serves the upstream's own storage over HTTPS with it (what is pushed to the
 * plain upstream is there too), and a Portcullis instance serves its clients over HTTPS and fetches that upstream over
 * HTTPS, trusting the CA (`upstreams[].ca`). A plain instance, identical otherwise, runs next to it in the same reps
 * (which goes first alternates). Each rep pulls a fresh image (skopeo, as the pulls phase: one cold and two warm pulls
 * per instance) and charges each instance's CPU (/proc, user+system) to the GiB it delivered.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent } from 'undici';
import { skopeoPull } from './clients.mjs';
import { startPortcullis } from './portcullis.mjs';
import { requireTool, runOk } from './proc.mjs';
import { startRegistry } from './registry.mjs';
import { median, round, summary } from './stats.mjs';

/** A CA and a server certificate for 127.0.0.1 (EC P-256), in `dir`. */
async function makeCerts(dir) {
  mkdirSync(dir, { recursive: true });
  const openssl = requireTool('openssl');
  const f = (n) => join(dir, n);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await runOk(openssl, ['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=portcullis bench CA']);
  await runOk(openssl, ['req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1']);
  // subjectAltName is what clients check.
  writeFileSync(f('server.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  await runOk(openssl, [
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-out',
    f('server.pem'),
    '-days',
    '2',
    '-extfile',
    f('server.ext'),
  ]);
  return { ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key') };
}

/**
 * @param {{ P: object, QUICK: boolean, tmp: string, clients: string, upstream: object, pcOpts: object, seed: Function,
 *           instances: object[], log: Function, logLevel: string, cpuSeconds: (pid: number) => number }} o
 */
export async function tlsPhase(o) {
  const certs = await makeCerts(join(o.tmp, 'tls-certs'));
  const agent = new Agent({ connect: { ca: readFileSync(certs.ca) } });
  const upTls = await startRegistry({
    dir: o.tmp,
    name: 'upstream-tls',
    dataDir: join(o.tmp, 'upstream', 'data'),
    tls: { cert: certs.cert, key: certs.key, agent },
  });
  const common = { ...o.pcOpts, logLevel: o.logLevel };
  const plain = await startPortcullis({ ...common, name: 'portcullis-plain' });
  const tls = await startPortcullis({
    ...common,
    name: 'portcullis-tls',
    // The registry name stays the upstream's (signatures and reports name it); its URL is the HTTPS one.
    upstream: { host: o.upstream.host, url: upTls.url, ca: certs.ca },
    extra: { ...o.pcOpts.extra, tls: { cert: certs.cert, key: certs.key } },
    agent,
  });
  o.instances.push(plain, tls);
  const sides = { plain, tls };
  const reps = o.QUICK ? 1 : 3;
  const cpu = { plain: { cold: [0, 0], warm: [0, 0] }, tls: { cold: [0, 0], warm: [0, 0] } };
  const ms = { plain: { cold: [], warm: [] }, tls: { cold: [], warm: [] } };
  const upstreamCpu = { plain: 0, tls: 0 };
  try {
    // Rep 0 is not counted: JIT warm-up of both fresh processes, their pools and TLS session state.
    for (let rep = 0; rep <= reps; rep++) {
      const repo = `bench/tls${rep}`;
      const img = await o.seed(repo, 'v1', o.P.image);
      const gib = img.bytes / 2 ** 30;
      for (const who of rep % 2 === 0 ? ['plain', 'tls'] : ['tls', 'plain']) {
        const pc = sides[who];
        const upPid = who === 'tls' ? upTls.pid : o.upstream.pid;
        for (const kind of ['cold', 'warm', 'warm']) {
          const c0 = o.cpuSeconds(pc.pid);
          const u0 = o.cpuSeconds(upPid);
          const t = await skopeoPull(pc.host, `${repo}:v1`, join(o.clients, `tls-${who}`));
          if (rep === 0) continue;
          cpu[who][kind][0] += o.cpuSeconds(pc.pid) - c0;
          cpu[who][kind][1] += gib;
          if (kind === 'cold') upstreamCpu[who] += o.cpuSeconds(upPid) - u0;
          ms[who][kind].push(t);
        }
        if (rep === 0) {
          o.log(`tls warm-up rep (not counted) ${who} done`);
          continue;
        }
        o.log(
          `tls rep ${rep}/${reps} ${who.padEnd(5)}: cold ${ms[who].cold.at(-1).toFixed(0)} ms, warm ${ms[who].warm.at(-2).toFixed(0)}/${ms[who].warm.at(-1).toFixed(0)} ms; ` +
            `Portcullis CPU so far ${(cpu[who].cold[0] / cpu[who].cold[1]).toFixed(2)} s/GiB cold, ${(cpu[who].warm[0] / cpu[who].warm[1]).toFixed(2)} warm`,
        );
      }
    }
  } finally {
    o.instances.splice(o.instances.indexOf(plain), 1);
    o.instances.splice(o.instances.indexOf(tls), 1);
    await plain.stop();
    await tls.stop();
    await upTls.stop();
    await agent.close();
  }
  const perGib = (who, kind) => round(cpu[who][kind][0] / cpu[who][kind][1], 2);
  return {
    tls: {
      method:
        'skopeo copy over HTTPS to a Portcullis serving TLS (EC P-256 certificate from a bench CA) that fetches a Distribution serving the ' +
        'same storage over HTTPS; next to an identical plain-HTTP instance and the plain upstream, in the same reps, alternating order. ' +
        'CPU: user+system seconds of each Portcullis process from /proc per GiB delivered, over every cold and every warm pull',
      reps,
      image_mib: round(o.P.image.layers * o.P.image.layerMiB, 1),
      cpu_s_per_gib: {
        tls: { cold: perGib('tls', 'cold'), warm: perGib('tls', 'warm') },
        plain: { cold: perGib('plain', 'cold'), warm: perGib('plain', 'warm') },
      },
      upstream_cpu_s_per_gib_cold: {
        tls: round(upstreamCpu.tls / cpu.tls.cold[1], 2),
        plain: round(upstreamCpu.plain / cpu.plain.cold[1], 2),
      },
      ms: Object.fromEntries(
        Object.entries(ms).map(([who, v]) => [who, { cold: summary(v.cold.map((x) => round(x, 0))), warm: summary(v.warm.map((x) => round(x, 0))) }]),
      ),
      cold_ms_ratio_tls_vs_plain: round(median(ms.tls.cold) / median(ms.plain.cold), 3),
      warm_ms_ratio_tls_vs_plain: round(median(ms.tls.warm) / median(ms.plain.warm), 3),
    },
    tls_cold_cpu_s_per_gib: perGib('tls', 'cold'),
    tls_warm_cpu_s_per_gib: perGib('tls', 'warm'),
    tls_plain_cold_cpu_s_per_gib: perGib('plain', 'cold'),
    tls_plain_warm_cpu_s_per_gib: perGib('plain', 'warm'),
  };
}
