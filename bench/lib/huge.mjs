/**
 * The `huge` phase (issue 16, item 4): an image with 128 layers and an index with 32 platforms, next to a 1-layer
 * image and a 1-platform index, all pushed (signed, with reports) to the real upstream registry. Each is decided
 * cold through the proxy once per rep (fresh repositories every rep, the shapes alternating within a rep), and the
 * phase reports the wall time of that first manifest GET (`huge_decision_ms`, median over reps), the decision
 * overhead the proxy adds (portcullis_decision_overhead_seconds, its sum over the request), and the RSS the process
 * grew to while deciding (VmHWM reset before each). For an index, the children are then asked for by digest (each
 * is decided on its own, as a client pulling every platform makes them): `index_*_children`.
 * Linear growth means: 128-layer ÷ 1-layer ≤ 128, 32-platform ÷ 1-platform ≤ 32; the ratios are reported.
 */
import { request } from 'undici';
import { MANIFEST_ACCEPT } from './images.mjs';
import { median, round } from './stats.mjs';

/** Tiny layers: the point is decision time and memory, not bytes. */
const LAYER = { layerMiB: 512 / 2 ** 20 };

/**
 * @param {{ pc: object, seed: Function, log: Function, reps: number, layers: number, platforms: number }} o
 */
export async function hugePhase(o) {
  const { pc, seed, log } = o;
  const shapes = [
    { name: 'image_1', layers: 1 },
    { name: `image_${o.layers}`, layers: o.layers },
    { name: 'index_1', platforms: 1 },
    { name: `index_${o.platforms}`, platforms: o.platforms },
  ];
  const platformsOf = (n) => Array.from({ length: n }, (_, i) => ({ os: 'linux', architecture: i % 2 ? 'arm64' : 'amd64', variant: `v${i}` }));
  // Everything is pushed first, so that the measurements of one rep follow each other closely.
  const seeded = [];
  for (let rep = 0; rep < o.reps; rep++) {
    const row = {};
    for (const s of shapes) {
      const repo = `bench/huge-${s.name.replace('_', '')}-r${rep}`;
      row[s.name] = s.platforms
        ? await seed(repo, 'v1', { layers: 1, ...LAYER }, platformsOf(s.platforms))
        : await seed(repo, 'v1', { layers: s.layers, ...LAYER });
    }
    seeded.push(row);
  }
  log(`huge: pushed ${o.reps} × (${shapes.map((s) => s.name).join(', ')})`);

  const samples = Object.fromEntries(shapes.flatMap((s) => [[s.name, []], ...(s.platforms ? [[`${s.name}_children`, []]] : [])]));
  const overhead = Object.fromEntries(shapes.map((s) => [s.name, []]));
  const rssGrowth = Object.fromEntries(shapes.map((s) => [s.name, []]));
  for (let rep = 0; rep < o.reps; rep++) {
    // Alternate the order within a rep, so that neither size always runs first on a busy machine.
    const order = rep % 2 ? [...shapes].reverse() : shapes;
    for (const s of order) {
      const img = seeded[rep][s.name];
      const rssBefore = pc.memory().rssMiB;
      pc.resetPeak();
      const sumBefore = await overheadSum(pc);
      samples[s.name].push(await timedGet(`${pc.url}/v2/${img.repo}/manifests/v1`));
      overhead[s.name].push((await overheadSum(pc)) - sumBefore);
      if (s.platforms) {
        const t = performance.now();
        for (const c of img.children) await timedGet(`${pc.url}/v2/${img.repo}/manifests/${c.digest}`);
        samples[`${s.name}_children`].push(performance.now() - t);
      }
      rssGrowth[s.name].push(pc.memory().hwmMiB - rssBefore);
    }
  }
  const ms = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, round(median(v), 1)]));
  const out = {
    reps: o.reps,
    decision_ms: ms,
    overhead_ms: Object.fromEntries(Object.entries(overhead).map(([k, v]) => [k, round(median(v) * 1000, 2)])),
    rss_growth_mib: Object.fromEntries(Object.entries(rssGrowth).map(([k, v]) => [k, round(median(v), 1)])),
    ratios: {
      [`image_${o.layers}_over_1`]: round(ms[`image_${o.layers}`] / ms.image_1, 2),
      [`index_${o.platforms}_over_1`]: round(ms[`index_${o.platforms}`] / ms.index_1, 2),
      [`index_${o.platforms}_children_over_1`]: round(ms[`index_${o.platforms}_children`] / ms.index_1_children, 2),
    },
    linear_bounds: { image: o.layers, index: o.platforms },
  };
  log(
    `huge: cold decision ms ${Object.entries(ms)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}; ratios ${JSON.stringify(out.ratios)}; RSS growth MiB ${JSON.stringify(out.rss_growth_mib)}`,
  );
  return { huge: out, huge_decision_ms: ms };
}

async function timedGet(url) {
  const t = performance.now();
  const res = await request(url, { headers: { accept: MANIFEST_ACCEPT } });
  await res.body.arrayBuffer();
  if (res.statusCode !== 200) throw new Error(`GET ${url}: HTTP ${res.statusCode}`);
  return performance.now() - t;
}

/** Seconds of decision overhead so far (the histogram's sum, over every label set). */
async function overheadSum(pc) {
  return (await pc.metrics()).filter((s) => s.name === 'portcullis_decision_overhead_seconds_sum').reduce((a, s) => a + s.value, 0);
}
