# Shared helpers: configuration access, the image reference, time, globs and string formatting.
#
# WASM note: only builtins listed in policies/capabilities.json may be used (native WASM builtins, the ones the
# npm SDK implements, and the custom time.parse_rfc3339_ns that the proxy provides). `opa build` enforces that.
package portcullis

# data.portcullis.config, or {} when the proxy sent none.
default cfg := {}

cfg := data.portcullis.config if is_object(data.portcullis.config)

default img := {}

img := input.image if is_object(input.image)

# "<registry>/<repository>", the string that scope, repository and exception globs match.
image_ref := concat("/", [object.get(img, "registry", ""), object.get(img, "repository", "")])

# The tag, when the image was requested by tag (absent, null or "" when pulled by digest).
tag := input.image.tag if {
	is_string(input.image.tag)
	input.image.tag != ""
}

# Accessory requests (signatures, attestations, SBOMs, referrers) and repository-level requests (a tag list, a
# referrers list: no digest) are only checked against the registry, repository and scope coverage rules; everything
# else (including a missing or unknown kind) is a manifest request.
repository_level_kinds := {"accessory", "tags", "referrers"}

is_manifest_request if not input.request.kind in repository_level_kinds

# input.now in nanoseconds. Undefined when absent or unparsable: then no exception and no CVE ignore is active.
now_ns := time.parse_rfc3339_ns(input.now)

# Something with an `expires` RFC3339 timestamp later than input.now. Missing or bad `expires` = not active.
unexpired(x) if {
	is_string(x.expires)
	time.parse_rfc3339_ns(x.expires) > now_ns
}

# Globs: '/' is the only delimiter. `*` and `?` never cross '/', `**` does. Character classes [a-z] and
# alternatives {a,b} work as in glob.match.
glob_any(patterns, s) if {
	is_array(patterns)
	some p in patterns
	glob.match(p, ["/"], s)
}

q(s) := concat("", ["\"", s, "\""]) if is_string(s)

else := "<none>"

# "a", "b", "c" (quoted, comma separated)
quoted_list(xs) := concat(", ", [q(x) | some x in xs])

# ": r1; r2" or "" for no reasons
reason_suffix(reasons) := concat("", [": ", concat("; ", reasons)]) if count(reasons) > 0

else := ""

int_str(n) := format_int(n, 10)

# Up to three elements of a set, sorted, with ", …" when there are more.
first_three(s) := concat(", ", array.slice(sort(s), 0, 3)) if count(s) <= 3

else := concat("", [concat(", ", array.slice(sort(s), 0, 3)), ", …"])
