/**
 * The `disk` phase (issue 16, item 1): the pulls phase with the client's output on the real disk (the root
 * filesystem, not tmpfs), where a buyer's skopeo or containerd writes. Before every pull: `sync`, then
 * `echo 3 > /proc/sys/vm/drop_caches` when the bench may (root), so that no pull inherits another's dirty or cached
 * pages: the upstream's, the proxies' and the client's files all come from and go to the disk. Per rep a fresh image:
 * a direct pull, then Portcullis and Distribution's proxy (which goes first alternates), each one cold and two warm
 * pulls, then a direct pull again; ratios to the mean of the rep's two direct pulls, medians over the reps.
 */
import { mkdirSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { skopeoPull } from './clients.mjs';
import { requireTool, run } from './proc.mjs';
import { median, round, summary } from './stats.mjs';

const TMPFS_MAGIC = 0x01021994;

/**
 * @param {{ P: object, QUICK: boolean, tmp: string, upstream: object, peer: object, pc: object, seed: Function, log: Function,
 *           peerAttempt: Function }} o
 */
export async function diskPhase(o) {
  const dir = join(o.tmp, 'disk-clients');
  mkdirSync(dir, { recursive: true });
  if (statfsSync(dir).type === TMPFS_MAGIC) throw new Error(`disk phase: ${dir} is on tmpfs; set TMPDIR to a directory on a real disk`);
  const sync = requireTool('sync');
  let dropped = true;
  const settle = async () => {
    await run(sync, [], { timeoutMs: 120_000 });
    if (!dropped) return;
    try {
      writeFileSync('/proc/sys/vm/drop_caches', '3');
    } catch {
      dropped = false;
    }
  };
  const reps = o.QUICK ? 2 : 5;
  const targets = { direct: o.upstream.host, portcullis: o.pc.host, peer: o.peer.host };
  const t = { direct: [], pcCold: [], pcWarm: [], peerCold: [], peerWarm: [] };
  const r = { cold: [], warm: [], peerCold: [], peerWarm: [] };
  const pull = async (who, ref) => {
    await settle();
    return skopeoPull(targets[who], ref, join(dir, 'pull'));
  };
  for (let rep = 0; rep < reps; rep++) {
    const repo = `bench/disk${rep}`;
    const img = await o.seed(repo, 'v1', o.P.image);
    const ref = `${repo}:v1`;
    const d1 = await pull('direct', ref);
    const got = {};
    for (const who of rep % 2 === 0 ? ['portcullis', 'peer'] : ['peer', 'portcullis']) {
      const pulls = async () => {
        const cold = await pull(who, ref);
        const warm = [await pull(who, ref), await pull(who, ref)];
        return { cold, warm: median(warm) };
      };
      got[who] = who === 'peer' ? await o.peerAttempt(`disk rep ${rep + 1}`, pulls) : await pulls();
    }
    const d2 = await pull('direct', ref);
    const direct = (d1 + d2) / 2;
    t.direct.push(d1, d2);
    t.pcCold.push(got.portcullis.cold);
    t.pcWarm.push(got.portcullis.warm);
    r.cold.push(got.portcullis.cold / direct);
    r.warm.push(got.portcullis.warm / direct);
    if (got.peer) {
      t.peerCold.push(got.peer.cold);
      t.peerWarm.push(got.peer.warm);
      r.peerCold.push(got.peer.cold / direct);
      r.peerWarm.push(got.peer.warm / direct);
    }
    o.log(
      `disk rep ${rep + 1}/${reps} (${(img.bytes / 2 ** 20).toFixed(0)} MiB to ${dir}): direct ${d1.toFixed(0)}/${d2.toFixed(0)} ms; ` +
        `Portcullis cold ${got.portcullis.cold.toFixed(0)} warm ${got.portcullis.warm.toFixed(0)}; ` +
        (got.peer ? `Distribution proxy cold ${got.peer.cold.toFixed(0)} warm ${got.peer.warm.toFixed(0)}` : 'Distribution proxy failed'),
    );
  }
  return {
    disk: {
      client_dir: dir,
      caches_dropped: dropped,
      method:
        'skopeo copy to dir: on the root filesystem; before every pull `sync` and ' +
        (dropped ? '`echo 3 > /proc/sys/vm/drop_caches`' : 'no cache drop (not permitted: not root)') +
        '; per rep a fresh image, direct, then each proxy (alternating) cold + 2 warm, then direct again; ratio to the mean of the two direct pulls',
      reps,
      image_mib: round(o.P.image.layers * o.P.image.layerMiB, 1),
      ms: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, summary(v.map((x) => round(x, 1)))])),
      ratios: Object.fromEntries(Object.entries(r).map(([k, v]) => [k, summary(v)])),
    },
    disk_warm_ratio: round(median(r.warm), 3),
    disk_cold_ratio: round(median(r.cold), 3),
    disk_dist_warm_ratio: round(median(r.peerWarm), 3),
    disk_dist_cold_ratio: round(median(r.peerCold), 3),
  };
}
