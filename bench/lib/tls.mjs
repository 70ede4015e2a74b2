export async function tlsPhase() {
  return {};
}
