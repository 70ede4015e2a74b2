package portcullis_test

slsa_v02 := "https://slsa.dev/provenance/v0.2"

slsa_v1 := "https://slsa.dev/provenance/v1"

spdx := "https://spdx.dev/Document"

good_provenance := {
	"version": "v1",
	"builder_id": "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0",
	"build_type": "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1",
	"source_repository": "https://github.com/acme/api",
	"source_ref": "refs/heads/main",
}

att(type, authority, provenance) := {"predicate_type": type, "authority": authority, "predicate": {}, "provenance": provenance}

sbom_att := {"predicate_type": spdx, "authority": "release-team", "predicate": {"spdxVersion": "SPDX-2.3"}}

provenance_req := {
	"name": "build",
	"predicateType": "slsa-provenance",
	"authorities": ["release-team"],
	"conditions": {
		"builderId": "https://github.com/slsa-framework/slsa-github-generator/**",
		"sourceRepository": {"regex": "https://github\\.com/acme/[a-z-]+"},
		"sourceRef": ["refs/heads/main", "refs/tags/v*"],
		"buildType": "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1",
	},
}

sbom_req := {"predicateType": "sbom", "authorities": ["release-team"]}

att_config := scope_config({"attestations": {"required": [provenance_req, sbom_req]}})

with_atts(atts, rejected) := object.union(base_input, {"attestations": atts, "attestations_rejected": rejected})

good_atts := [att(slsa_v1, "release-team", good_provenance), sbom_att]

test_attestations_met if {
	clean(with_atts(good_atts, []), att_config)
}

test_provenance_v02_also_counts if {
	p := object.union(good_provenance, {"version": "v0.2"})
	clean(with_atts([att(slsa_v02, "release-team", p), sbom_att], []), att_config)
}

test_no_requirement_no_rule if {
	clean(base_input, base_config)
}

test_wrong_builder if {
	p := object.union(good_provenance, {"builder_id": "https://evil/builder"})
	d := decide(with_atts([att(slsa_v1, "release-team", p), sbom_att], []), att_config)
	d.allow == false
	d.deny == [{
		"rule": "attestation.condition",
		"message": "build (slsa-provenance): builder.id \"https://evil/builder\" does not match \"https://github.com/slsa-framework/slsa-github-generator/**\"",
	}]
}

# `*` does not cross `/`: a builder deeper under the prefix needs `**`.
test_glob_star_stays_within_a_path_component if {
	req := object.union(provenance_req, {"conditions": {"builderId": "https://github.com/slsa-framework/*"}})
	conf := scope_config({"attestations": {"required": [req]}})
	deny_rules(decide(with_atts(good_atts, []), conf)) == {"attestation.condition"}
}

test_wrong_source_repository_and_ref if {
	p := object.union(good_provenance, {"source_repository": "https://github.com/acme/api.evil", "source_ref": "refs/heads/dev"})
	d := decide(with_atts([att(slsa_v1, "release-team", p), sbom_att], []), att_config)
	deny_messages(d) == {
		"build (slsa-provenance): source repository \"https://github.com/acme/api.evil\" does not match regex \"https://github\\.com/acme/[a-z-]+\"",
		"build (slsa-provenance): source ref \"refs/heads/dev\" does not match \"refs/heads/main\" or \"refs/tags/v*\"",
	}
}

# The regex is anchored: a match inside the value is not enough.
test_regex_is_anchored if {
	p := object.union(good_provenance, {"source_repository": "https://github.com/acme/api/../evil"})
	d := decide(with_atts([att(slsa_v1, "release-team", p), sbom_att], []), att_config)
	deny_rules(d) == {"attestation.condition"}
}

test_missing_field_fails if {
	p := object.union(good_provenance, {"build_type": null})
	d := decide(with_atts([att(slsa_v1, "release-team", p), sbom_att], []), att_config)
	deny_messages(d) == {"build (slsa-provenance): buildType is missing (want \"https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1\")"}
}

test_oversized_predicate_fails_conditions if {
	big := {"predicate_type": slsa_v1, "authority": "release-team", "predicate": null, "oversized": true}
	d := decide(with_atts([big, sbom_att], []), att_config)
	"build (slsa-provenance): predicate over the size bound (signatures.maxPredicateSize), so builder.id cannot be checked" in deny_messages(d)
	deny_rules(d) == {"attestation.condition"}
}

# Without conditions the attestation's presence is what counts, however large its predicate.
test_oversized_sbom_still_present if {
	big := {"predicate_type": spdx, "authority": "release-team", "predicate": null, "oversized": true}
	clean(with_atts([att(slsa_v1, "release-team", good_provenance), big], []), att_config)
}

test_sbom_missing if {
	d := decide(with_atts([att(slsa_v1, "release-team", good_provenance)], []), att_config)
	d.deny == [{"rule": "attestation.missing", "message": "sbom: no attestation of type \"https://cyclonedx.org/bom\", \"https://spdx.dev/Document\" found"}]
}

test_cyclonedx_is_an_sbom if {
	cdx := {"predicate_type": "https://cyclonedx.org/bom", "authority": "release-team", "predicate": {}}
	clean(with_atts([att(slsa_v1, "release-team", good_provenance), cdx], []), att_config)
}

test_signed_by_an_authority_not_named if {
	inp := with_atts([att(slsa_v1, "ci", good_provenance), sbom_att], [{"predicate_type": slsa_v1, "authority": "release-team", "reason": "key mismatch", "code": "KEY_MISMATCH"}])
	d := decide(inp, att_config)
	d.deny == [{
		"rule": "attestation.unverified",
		"message": "build (slsa-provenance): not verified by \"release-team\": key mismatch; verified only by authority \"ci\"",
	}]
}

test_attestation_of_another_digest if {
	rej := [{"predicate_type": slsa_v1, "authority": "release-team", "reason": "digest mismatch (signed sha256:2222222222…)", "code": "DIGEST_MISMATCH"}]
	d := decide(with_atts([sbom_att], rej), att_config)
	deny_messages(d) == {"build (slsa-provenance): not verified by \"release-team\": digest mismatch (signed sha256:2222222222…)"}
}

# An attestation whose subject is some other digest than the image, its parent or root never counts.
test_subject_digest_must_be_this_image_or_its_index if {
	other := object.union(att(slsa_v1, "release-team", good_provenance), {"subject_digest": "sha256:9999"})
	deny_rules(decide(with_atts([other, sbom_att], []), att_config)) == {"attestation.unverified"}
	parent := "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	inherited := object.union(att(slsa_v1, "release-team", good_provenance), {"subject_digest": parent})
	inp := object.union(with_atts([inherited, sbom_att], []), {"image": object.union(base_input.image, {"parent": {"digest": parent}})})
	clean(inp, att_config)
}

test_unreadable_attestations_named_when_missing if {
	rej := [{"predicate_type": null, "reason": "discovery failed: tag sha256-….att: HTTP 500", "code": "DISCOVERY_FAILED"}]
	d := decide(with_atts([att(slsa_v1, "release-team", good_provenance)], rej), att_config)
	deny_messages(d) == {"sbom: no attestation of type \"https://cyclonedx.org/bom\", \"https://spdx.dev/Document\" found (discovery failed: tag sha256-….att: HTTP 500)"}
}

test_not_configured_says_so if {
	inp := object.union(with_atts([], []), {"signatures": {"status": "not_configured", "verified": [], "rejected": []}})
	conf := scope_config({"signatures": {"authorities": []}, "attestations": {"required": [sbom_req]}})
	deny_messages(decide(inp, conf)) == {"sbom: no attestation of type \"https://cyclonedx.org/bom\", \"https://spdx.dev/Document\" found (signature verification is not configured in the proxy)"}
}

test_uri_predicate_type_and_vuln_alias if {
	vuln := {"predicate_type": "https://cosign.sigstore.dev/attestation/vuln/v1", "authority": "ci", "predicate": {}}
	custom := {"predicate_type": "https://example.com/test-result/v1", "authority": "ci", "predicate": {}}
	conf := scope_config({"attestations": {"required": [
		{"predicateType": "vuln", "authorities": ["ci"]},
		{"predicateType": "https://example.com/test-result/v1", "authorities": ["ci"]},
	]}})
	clean(with_atts([vuln, custom], []), conf)
	deny_rules(decide(with_atts([vuln], []), conf)) == {"attestation.missing"}
}

# Fail closed on settings the config check would refuse: no authority, unknown conditions, a bad setting.
test_requirement_without_authorities_denies if {
	conf := scope_config({"attestations": {"required": [{"predicateType": "sbom"}]}})
	d := decide(with_atts(good_atts, []), conf)
	deny_messages(d) == {"sbom: not verified by <no authority named>: verified only by authority \"release-team\""}
}

test_unknown_condition_denies if {
	req := {"predicateType": "sbom", "authorities": ["release-team"], "conditions": {"builderID": "x"}}
	d := decide(with_atts(good_atts, []), scope_config({"attestations": {"required": [req]}}))
	deny_messages(d) == {"sbom: unknown condition \"builderID\""}
}

test_invalid_setting_denies if {
	conf := scope_config({"attestations": "sbom"})
	deny_rules(decide(with_atts(good_atts, []), conf)) == {"attestation.missing"}
}

test_accessories_not_checked if {
	inp := object.union(base_input, {"request": object.union(base_input.request, {"kind": "accessory"})})
	clean(inp, att_config)
}

test_exception_turns_attestation_deny_into_warning if {
	conf := object.union(att_config, {"exceptions": [{"images": ["ghcr.io/acme/api"], "rules": ["attestation.*"], "owner": "sec", "reason": "INC-7", "expires": future}]})
	d := decide(with_atts([], []), conf)
	d.allow == true
	warn_rules(d) == {"attestation.missing"}
}

test_malformed_settings_and_input_fail_closed if {
	# conditions that are not an object, a requirement without a predicate type, attestations that are not a list
	bad_conditions := {"predicateType": "slsa-provenance", "authorities": ["release-team"], "conditions": "builderId"}
	d1 := decide(with_atts(good_atts, []), scope_config({"attestations": {"required": [bad_conditions]}}))
	deny_messages(d1) == {"slsa-provenance: unknown condition \"<invalid conditions>\""}
	d2 := decide(with_atts(good_atts, []), scope_config({"attestations": {"required": [{"authorities": ["release-team"]}]}}))
	deny_messages(d2) == {"attestation: no attestation of type <none> found"}
	inp := object.union(base_input, {"attestations": "all of them", "attestations_rejected": {"x": 1}})
	deny_rules(decide(inp, att_config)) == {"attestation.missing"}
}

test_root_digest_counts_for_a_child if {
	root := "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	inherited := [object.union(a, {"subject_digest": root}) | some a in good_atts]
	inp := object.union(with_atts(inherited, []), {"image": object.union(base_input.image, {"root": {"digest": root, "tag": "v1"}})})
	clean(inp, att_config)
}

test_message_names_every_pattern_of_a_list if {
	req := object.union(provenance_req, {"conditions": {"sourceRef": ["refs/heads/main", {"regex": "refs/tags/v[0-9]+"}]}})
	p := object.union(good_provenance, {"source_ref": "refs/heads/dev"})
	d := decide(with_atts([att(slsa_v1, "release-team", p)], []), scope_config({"attestations": {"required": [req]}}))
	deny_messages(d) == {"build (slsa-provenance): source ref \"refs/heads/dev\" does not match \"refs/heads/main\" or regex \"refs/tags/v[0-9]+\""}
}
