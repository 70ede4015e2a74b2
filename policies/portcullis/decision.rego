# The entrypoint: data.portcullis.decision (opa build -t wasm -e portcullis/decision).
#
#   {"allow": bool, "deny": [{"rule","message"}], "warn": [{"rule","message"}],
#    "scope": "<scope name>" | null, "mode": "enforce" | "warn" | "dry-run"}
#
# plus "wait_seconds": n when a pending scan is the only blocker and the scope says on_pending: "wait" (scan.rego).
#
# allow is true exactly when deny is empty. The policy never relaxes allow for the warn or dry-run modes: the
# proxy applies the mode (warn: allow and report; dry-run: allow and only log).
package portcullis

deny_set := violations - excepted

warn_set := warnings | excepted_warnings

# Deterministic order: by rule id, then message.
entries(s) := [{"rule": t[0], "message": t[1]} | some t in sort([[x.rule, x.message] | some x in s])]

decision_base := {
	"allow": count(deny_set) == 0,
	"deny": entries(deny_set),
	"warn": entries(warn_set),
	"scope": scope_name,
	"mode": mode,
}

decision := object.union(decision_base, {"wait_seconds": scan_wait_seconds}) if scan_wait

else := decision_base
