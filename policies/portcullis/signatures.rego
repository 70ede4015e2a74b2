# signature.required: the scope's `signatures` block names the authorities (configured in the proxy) whose
# verified signatures the image needs. require: "all" (default; also used for unknown values), "any", or
# "at_least" with `min` (default 1). Manifest requests only.
package portcullis

sig_cfg := object.get(scope, "signatures", {})

sig_authorities := {a | some a in object.get(sig_cfg, "authorities", []); is_string(a)}

sig_required if {
	is_manifest_request
	count(sig_authorities) > 0
}

sig_require := object.get(sig_cfg, "require", "all")

default sig_in := {}

sig_in := input.signatures if is_object(input.signatures)

sig_status := object.get(sig_in, "status", "missing")

# Authorities that have at least one verified signature for this exact digest.
verified_authorities contains a if {
	some v in object.get(sig_in, "verified", [])
	a := v.authority
	is_string(a)
}

satisfied_authorities := sig_authorities & verified_authorities

# Rejection reasons that concern authority a: those naming it, and those naming no authority.
rejected_reasons(a) := {r.reason |
	some r in object.get(sig_in, "rejected", [])
	is_string(r.reason)
	object.get(r, "authority", a) == a
}

rejected_reasons_any(auths) := {r | some a in auths; some r in rejected_reasons(a)}

# Why the requirement failed, for a set of authorities.
sig_why(auths) := "no signature found" if sig_status == "none"

else := concat("", ["signature verification error", reason_suffix(array.slice(sort(rejected_reasons_any(auths)), 0, 3))]) if {
	sig_status == "error"
}

else := concat("", ["no signature verified", reason_suffix(array.slice(sort(rejected_reasons_any(auths)), 0, 3))])

# Fail closed when the proxy has no signature verification configured but the scope needs it.
violations contains {"rule": "signature.required", "message": msg} if {
	sig_required
	sig_status == "not_configured"
	msg := concat("", [
		"signature required by ", quoted_list(sort(sig_authorities)),
		" but signature verification is not configured in the proxy",
	])
}

# require: all (the default, and any unknown value)
violations contains {"rule": "signature.required", "message": msg} if {
	sig_required
	sig_status != "not_configured"
	not sig_require in {"any", "at_least"}
	some a in sig_authorities
	not a in verified_authorities
	msg := concat("", ["signature required by authority ", q(a), " (", sig_why({a}), ")"])
}

# require: any
violations contains {"rule": "signature.required", "message": msg} if {
	sig_required
	sig_status != "not_configured"
	sig_require == "any"
	count(satisfied_authorities) == 0
	msg := concat("", [
		"signature required by any of ", quoted_list(sort(sig_authorities)),
		" (", sig_why(sig_authorities), ")",
	])
}

# require: at_least, min
sig_min := n if {
	n := object.get(sig_cfg, "min", 1)
	is_number(n)
} else := 1

violations contains {"rule": "signature.required", "message": msg} if {
	sig_required
	sig_status != "not_configured"
	sig_require == "at_least"
	count(satisfied_authorities) < sig_min
	missing := sig_authorities - satisfied_authorities
	msg := concat("", [
		"signatures required by at least ", int_str(sig_min), " of ", quoted_list(sort(sig_authorities)),
		", ", int_str(count(satisfied_authorities)), " verified (", sig_why(missing), ")",
	])
}
