export async function fanoutPhase() {
  return {};
}
