package portcullis_test

sig(authority) := {"authority": authority, "kind": "cosign-key", "format": "sigstore-bundle", "identity": {}, "tlog": true}

sigs(authorities, rejected) := {"status": "ok", "verified": [sig(a) | some a in authorities], "rejected": rejected}

test_all_signed_allowed if {
	clean(base_input, base_config)
}

test_all_missing_one_authority if {
	inp := with_sigs(sigs(["ci"], [{"authority": "release-team", "reason": "key mismatch"}]))
	d := decide(inp, base_config)
	d.allow == false
	d.deny == [{
		"rule": "signature.required",
		"message": "signature required by authority \"release-team\" (no signature verified: key mismatch)",
	}]
}

# The proxy adds a stable code to each rejection; the messages show the reasons only, as before the codes existed.
test_codes_do_not_change_messages if {
	inp := with_sigs(sigs(["ci"], [
		{"authority": "release-team", "reason": "key mismatch", "code": "KEY_MISMATCH"},
		{"authority": "release-team", "reason": "expired (certificate not valid at the signing time)", "code": "EXPIRED"},
	]))
	deny_messages(decide(inp, base_config)) == {"signature required by authority \"release-team\" (no signature verified: expired (certificate not valid at the signing time); key mismatch)"}
}

test_all_reasons_of_other_authorities_not_shown if {
	inp := with_sigs(sigs(["ci"], [
		{"authority": "ci", "reason": "expired certificate"},
		{"reason": "digest mismatch"},
	]))
	deny_messages(decide(inp, base_config)) == {"signature required by authority \"release-team\" (no signature verified: digest mismatch)"}
}

test_all_missing_both_authorities if {
	d := decide(with_sigs(sigs([], [])), base_config)
	deny_messages(d) == {
		"signature required by authority \"ci\" (no signature verified)",
		"signature required by authority \"release-team\" (no signature verified)",
	}
}

test_status_none if {
	d := decide(with_sigs({"status": "none", "verified": [], "rejected": []}), scope_config({"signatures": {"authorities": ["ci"]}}))
	d.deny == [{"rule": "signature.required", "message": "signature required by authority \"ci\" (no signature found)"}]
}

test_status_error if {
	inp := with_sigs({"status": "error", "verified": [], "rejected": [{"reason": "referrers API timeout"}]})
	d := decide(inp, scope_config({"signatures": {"authorities": ["ci"]}}))
	deny_messages(d) == {"signature required by authority \"ci\" (signature verification error: referrers API timeout)"}
}

test_status_not_configured_fails_closed if {
	inp := with_sigs({"status": "not_configured", "verified": [], "rejected": []})
	d := decide(inp, base_config)
	d.deny == [{
		"rule": "signature.required",
		"message": "signature required by \"ci\", \"release-team\" but signature verification is not configured in the proxy",
	}]
}

test_signatures_missing_from_input_denied if {
	d := decide(object.remove(base_input, ["signatures"]), base_config)
	deny_rules(d) == {"signature.required"}
}

test_not_configured_fine_without_requirement if {
	inp := with_sigs({"status": "not_configured", "verified": [], "rejected": []})
	clean(inp, object.union(base_config, {"scopes": [replace(base_scope, "signatures", {})]}))
	clean(inp, scope_config({"signatures": {"authorities": []}}))
}

test_unknown_authority_signature_does_not_count if {
	d := decide(with_sigs(sigs(["someone-else"], [])), scope_config({"signatures": {"authorities": ["ci"]}}))
	deny_rules(d) == {"signature.required"}
}

test_any_satisfied if {
	clean(with_sigs(sigs(["ci"], [])), scope_config({"signatures": {"authorities": ["release-team", "ci"], "require": "any"}}))
}

test_any_unsatisfied if {
	inp := with_sigs(sigs([], [{"authority": "ci", "reason": "no matching identity"}]))
	d := decide(inp, scope_config({"signatures": {"authorities": ["release-team", "ci"], "require": "any"}}))
	d.deny == [{
		"rule": "signature.required",
		"message": "signature required by any of \"ci\", \"release-team\" (no signature verified: no matching identity)",
	}]
}

test_at_least_satisfied if {
	conf := scope_config({"signatures": {"authorities": ["a", "b", "c"], "require": "at_least", "min": 2}})
	clean(with_sigs(sigs(["a", "c"], [])), conf)
}

test_at_least_unsatisfied if {
	conf := scope_config({"signatures": {"authorities": ["a", "b", "c"], "require": "at_least", "min": 2}})
	d := decide(with_sigs(sigs(["a"], [{"authority": "b", "reason": "key mismatch"}])), conf)
	d.deny == [{
		"rule": "signature.required",
		"message": "signatures required by at least 2 of \"a\", \"b\", \"c\", 1 verified (no signature verified: key mismatch)",
	}]
}

test_at_least_default_min_is_one if {
	conf := scope_config({"signatures": {"authorities": ["a", "b"], "require": "at_least"}})
	clean(with_sigs(sigs(["b"], [])), conf)
	deny_rules(decide(with_sigs(sigs([], [])), conf)) == {"signature.required"}
}

test_unknown_require_value_means_all if {
	conf := scope_config({"signatures": {"authorities": ["a", "b"], "require": "most"}})
	deny_messages(decide(with_sigs(sigs(["a"], [])), conf)) == {"signature required by authority \"b\" (no signature verified)"}
}

test_rejected_reasons_capped_at_three if {
	inp := with_sigs(sigs([], [{"authority": "ci", "reason": r} | some r in ["r1", "r2", "r3", "r4"]]))
	d := decide(inp, scope_config({"signatures": {"authorities": ["ci"]}}))
	deny_messages(d) == {"signature required by authority \"ci\" (no signature verified: r1; r2; r3)"}
}

test_at_least_bad_min_means_one if {
	conf := scope_config({"signatures": {"authorities": ["a", "b"], "require": "at_least", "min": "two"}})
	clean(with_sigs(sigs(["b"], [])), conf)
}
