export async function diskPhase() {
  return {};
}
