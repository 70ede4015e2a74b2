package portcullis_test

with_client(c) := object.union(base_input, {"request": object.union(base_input.request, {"client": c})})

alice := {"ip": "10.0.0.1", "user": "alice", "groups": ["team-a"], "method": "basic", "user_agent": "crane"}

bob := {"ip": "10.0.0.2", "user": "bob", "groups": ["team-b"], "method": "token", "user_agent": "containerd/1.7"}

anon := {"ip": "10.0.0.3", "user": null, "groups": [], "method": "anonymous", "user_agent": "skopeo"}

team_b_only := scope_config({"clients": {"groups": ["team-b"]}})

test_no_clients_rule_lets_everyone_through if {
	clean(with_client(alice), base_config)
	clean(with_client(anon), base_config)
}

test_group_allowed if {
	clean(with_client(bob), team_b_only)
}

test_other_team_denied_naming_the_identity_rule if {
	d := decide(with_client(alice), team_b_only)
	d.allow == false
	d.deny == [{"rule": "client.not_allowed", "message": "client \"alice\" (groups team-a) via basic may not pull \"ghcr.io/acme/api\" (scope \"acme\" allows groups \"team-b\")"}]
}

test_anonymous_denied_unless_allowed if {
	d := decide(with_client(anon), team_b_only)
	deny_messages(d) == {"client anonymous via anonymous may not pull \"ghcr.io/acme/api\" (scope \"acme\" allows groups \"team-b\")"}
	clean(with_client(anon), scope_config({"clients": {"groups": ["team-b"], "anonymous": true}}))
}

test_user_globs_match_spiffe_ids if {
	node := {"ip": "10.0.0.4", "user": "spiffe://example.org/ns/team-a/sa/node", "groups": [], "method": "mtls"}
	clean(with_client(node), scope_config({"clients": {"users": ["spiffe://example.org/ns/team-a/**"]}}))
	deny_rules(decide(with_client(node), scope_config({"clients": {"users": ["spiffe://example.org/ns/team-b/**"]}}))) == {"client.not_allowed"}
}

test_methods_restrict if {
	conf := scope_config({"clients": {"groups": ["team-b"], "methods": ["mtls"]}})
	deny_rules(decide(with_client(bob), conf)) == {"client.not_allowed"}
}

test_missing_client_counts_as_anonymous if {
	inp := object.union(base_input, {"request": object.remove(base_input.request, ["client"])})
	deny_rules(decide(inp, team_b_only)) == {"client.not_allowed"}
}

test_applies_to_accessories if {
	inp := object.union(with_client(alice), {"request": object.union(with_client(alice).request, {"kind": "accessory"})})
	deny_rules(decide(inp, team_b_only)) == {"client.not_allowed"}
}

test_exceptions_do_not_relax_client_rules if {
	conf := object.union(team_b_only, {"exceptions": [{"images": ["ghcr.io/acme/**"], "owner": "sec", "reason": "x", "expires": future}]})
	d := decide(with_client(alice), conf)
	d.allow == false
	deny_rules(d) == {"client.not_allowed"}
}

test_empty_clients_rule_denies_everyone if {
	d := decide(with_client(bob), scope_config({"clients": {}}))
	deny_messages(d) == {"client \"bob\" (groups team-b) via token may not pull \"ghcr.io/acme/api\" (scope \"acme\" allows no client)"}
}
