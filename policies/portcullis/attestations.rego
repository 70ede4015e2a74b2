# attestation.missing, attestation.unverified, attestation.condition: the scope's `attestations.required` list.
#
# Each requirement {name, predicateType, authorities, conditions} is met by one entry of input.attestations (an
# attestation whose envelope verified against `authority` and whose in-toto subject is this digest, or for a child
# the index that admitted it) with a matching predicate type, an authority the requirement names, and every
# condition true. Otherwise exactly one of:
#   attestation.missing     nothing of that predicate type was found at all (verified or not);
#   attestation.unverified  some was found, but none verified against a named authority;
#   attestation.condition   one verified, but a condition failed (one message per failed condition).
# Conditions hold on input.attestations[].provenance (SLSA v0.2 and v1 read alike by the proxy). A pattern is a glob
# (the policy's glob syntax, `/` the only delimiter: `**` crosses it) or {"regex": "…"} (RE2, always anchored), or a
# list of these (any one matches). A field that is absent, or a predicate over the size bound, fails its condition.
# Manifest requests only.
package portcullis

default att_cfg := {}

att_cfg := object.get(scope, "attestations", {})

# A setting that is not an object (the proxy's config check refuses it) denies rather than being ignored.
att_requirements := [r | some r in object.get(att_cfg, "required", []); is_object(r)] if {
	is_manifest_request
	is_object(att_cfg)
	is_array(object.get(att_cfg, "required", []))
} else := [{"name": "attestations", "predicateType": "<invalid attestations setting>"}] if {
	is_manifest_request
} else := []

slsa_v02 := "https://slsa.dev/provenance/v0.2"

slsa_v1 := "https://slsa.dev/provenance/v1"

spdx_type := "https://spdx.dev/Document"

cyclonedx_type := "https://cyclonedx.org/bom"

# Short names for predicate types; anything else is taken as the predicate type URI itself.
att_aliases := {
	"slsa-provenance": {slsa_v02, slsa_v1},
	"slsa-provenance-v0.2": {slsa_v02},
	"slsa-provenance-v1": {slsa_v1},
	"spdx": {spdx_type},
	"cyclonedx": {cyclonedx_type},
	"sbom": {spdx_type, cyclonedx_type},
	"vuln": {"https://cosign.sigstore.dev/attestation/vuln/v1"},
}

att_types(r) := att_aliases[r.predicateType] if is_string(r.predicateType)

else := {r.predicateType} if is_string(r.predicateType)

else := set()

# "name" or "name (predicateType)": what messages call the requirement.
att_label(r) := r.predicateType if {
	object.get(r, "name", r.predicateType) == r.predicateType
	is_string(r.predicateType)
} else := concat("", [r.name, " (", r.predicateType, ")"]) if {
	is_string(r.name)
	is_string(r.predicateType)
} else := "attestation"

att_authorities(r) := {a | some a in object.get(r, "authorities", []); is_string(a)}

att_conditions(r) := c if {
	c := object.get(r, "conditions", {})
	is_object(c)
} else := {"<invalid conditions>": null}

att_input := [a | some a in object.get(input, "attestations", []); is_object(a)] if is_array(object.get(input, "attestations", []))

else := []

att_rejected_input := [x | some x in object.get(input, "attestations_rejected", []); is_object(x)] if {
	is_array(object.get(input, "attestations_rejected", []))
} else := []

# The attestation is about this digest (or, for a child, about the index that admitted it).
att_subject_ok(a) if not "subject_digest" in object.keys(a)

att_subject_ok(a) if a.subject_digest == object.get(img, "digest", null)

att_subject_ok(a) if a.subject_digest == object.get(object.get(img, "parent", {}), "digest", null)

att_subject_ok(a) if a.subject_digest == object.get(object.get(img, "root", {}), "digest", null)

# Verified by a named authority, of the right type, about this image: these are checked against the conditions.
att_candidates(r) := [a |
	some a in att_input
	a.predicate_type in att_types(r)
	a.authority in att_authorities(r)
	att_subject_ok(a)
]

# Condition name -> [field of attestations[].provenance, what messages call it].
att_fields := {
	"builderId": ["builder_id", "builder.id"],
	"sourceRepository": ["source_repository", "source repository"],
	"sourceRef": ["source_ref", "source ref"],
	"buildType": ["build_type", "buildType"],
}

att_match_one(p, v) if {
	is_string(p)
	glob.match(p, ["/"], v)
}

att_match_one(p, v) if {
	is_object(p)
	is_string(p.regex)
	regex.match(concat("", ["^(?:", p.regex, ")$"]), v)
}

att_matches(p, v) if att_match_one(p, v)

att_matches(p, v) if {
	is_array(p)
	some x in p
	att_match_one(x, v)
}

# Positive: a condition holds only when everything it needs is there (anything undefined fails it).
att_cond_ok(a, k, want) if {
	object.get(a, "oversized", false) != true
	f := att_fields[k]
	v := object.get(object.get(a, "provenance", {}), f[0], null)
	is_string(v)
	att_matches(want, v)
}

att_satisfied(r) if {
	some a in att_candidates(r)
	every k, want in att_conditions(r) {
		att_cond_ok(a, k, want)
	}
}

att_pattern_text(p) := q(p) if is_string(p)

else := concat("", ["regex ", q(p.regex)]) if {
	is_object(p)
	is_string(p.regex)
} else := concat(" or ", [att_pattern_text_one(x) | some x in p]) if is_array(p)

else := json.marshal(p)

att_pattern_text_one(p) := q(p) if is_string(p)

else := concat("", ["regex ", q(p.regex)]) if {
	is_object(p)
	is_string(p.regex)
} else := json.marshal(p)

att_failure(a, k, want) := concat("", ["predicate over the size bound (signatures.maxPredicateSize), so ", att_fields[k][1], " cannot be checked"]) if {
	object.get(a, "oversized", false) == true
	att_fields[k]
} else := concat("", ["unknown condition ", q(k)]) if {
	not att_fields[k]
} else := concat("", [att_fields[k][1], " is missing (want ", att_pattern_text(want), ")"]) if {
	not is_string(object.get(object.get(a, "provenance", {}), att_fields[k][0], null))
} else := concat("", [
	att_fields[k][1], " ", q(object.get(a.provenance, att_fields[k][0], null)),
	" does not match ", att_pattern_text(want),
])

# Every attestation of the requirement's type found, verified by anyone or not.
att_found(r) := {a.predicate_type | some a in att_input; a.predicate_type in att_types(r)} | {x.predicate_type |
	some x in att_rejected_input
	x.predicate_type in att_types(r)
}

# Why nothing verified against the named authorities: their rejection reasons, and who else verified one.
att_unverified_reasons(r) := {x.reason |
	some x in att_rejected_input
	x.predicate_type in att_types(r)
	object.get(x, "authority", "") in att_authorities(r)
	is_string(x.reason)
} | {concat("", ["verified only by authority ", q(a.authority)]) |
	some a in att_input
	a.predicate_type in att_types(r)
	not a.authority in att_authorities(r)
}

# Attestations that could not be read at all (or a failed lookup): their type is unknown, so they may be the one.
att_unreadable_reasons := {x.reason | some x in att_rejected_input; x.predicate_type == null; is_string(x.reason)}

att_type_text(r) := quoted_list(sort(att_types(r))) if count(att_types(r)) > 0

else := "<none>"

att_authority_text(r) := quoted_list(sort(att_authorities(r))) if count(att_authorities(r)) > 0

else := "<no authority named>"

att_missing_why := " (signature verification is not configured in the proxy)" if sig_status == "not_configured"

else := concat("", [" (", concat("; ", array.slice(sort(att_unreadable_reasons), 0, 3)), ")"]) if count(att_unreadable_reasons) > 0

else := ""

violations contains {"rule": "attestation.missing", "message": msg} if {
	some r in att_requirements
	not att_satisfied(r)
	count(att_found(r)) == 0
	msg := concat("", [att_label(r), ": no attestation of type ", att_type_text(r), " found", att_missing_why])
}

violations contains {"rule": "attestation.unverified", "message": msg} if {
	some r in att_requirements
	not att_satisfied(r)
	count(att_found(r)) > 0
	count(att_candidates(r)) == 0
	msg := concat("", [
		att_label(r), ": not verified by ", att_authority_text(r),
		reason_suffix(array.slice(sort(att_unverified_reasons(r)), 0, 3)),
	])
}

att_condition_messages(r) := {msg |
	some a in att_candidates(r)
	some k, want in att_conditions(r)
	not att_cond_ok(a, k, want)
	msg := concat("", [att_label(r), ": ", att_failure(a, k, want)])
}

violations contains {"rule": "attestation.condition", "message": msg} if {
	some r in att_requirements
	not att_satisfied(r)
	count(att_candidates(r)) > 0
	some msg in att_condition_messages(r)
}

# Never silently: should no message be built, the requirement still denies.
violations contains {"rule": "attestation.condition", "message": concat("", [att_label(r), ": conditions not met"])} if {
	some r in att_requirements
	not att_satisfied(r)
	count(att_candidates(r)) > 0
	count(att_condition_messages(r)) == 0
}
