package portcullis_test

test_decision_shape if {
	d := decide(base_input, base_config)
	object.keys(d) == {"allow", "deny", "warn", "scope", "mode"}
	is_array(d.deny)
	is_array(d.warn)
}

test_deny_entries_sorted_by_rule if {
	inp := object.union(with_image({"tag": "latest"}), {
		"signatures": {"status": "none", "verified": [], "rejected": []},
		"scan": {"status": "missing"},
	})
	d := decide(inp, scope_config({"deny_tags": ["latest"], "require_digest": true}))
	[e.rule | some e in d.deny] == [
		"digest.required", "scan.missing", "signature.required", "signature.required", "tag.denied",
	]
}

test_allow_iff_no_deny if {
	d := decide(with_scan({"status": "pending"}), scope_config({"scan": {"on_pending": "warn"}}))
	d.allow == true
	count(d.warn) == 1
	d2 := decide(with_scan({"status": "pending"}), base_config)
	d2.allow == false
}
