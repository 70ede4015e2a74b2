# Input validation, registry and repository allow-lists, and scope selection.
package portcullis

# --- input.invalid: the policy only understands input version 1 with an image registry and repository.
# (Note for rule authors: `not f(x.y)` is never true when x.y is undefined; use object.get for optional fields.)

violations contains {"rule": "input.invalid", "message": msg} if {
	not input.version == 1
	msg := "unsupported policy input version (want 1)"
}

violations contains {"rule": "input.invalid", "message": "input has no image registry or repository"} if {
	not is_string(object.get(img, "registry", null))
}

violations contains {"rule": "input.invalid", "message": "input has no image registry or repository"} if {
	not is_string(object.get(img, "repository", null))
}

# --- registry.not_allowed: config.registries (globs on image.registry); empty or absent = any upstream.

allowed_registries := object.get(cfg, "registries", [])

violations contains {"rule": "registry.not_allowed", "message": msg} if {
	count(allowed_registries) > 0
	not glob_any(allowed_registries, object.get(img, "registry", ""))
	msg := concat("", ["registry ", q(object.get(img, "registry", "")), " is not allowed"])
}

# --- repository.not_allowed: config.repositories (globs on "<registry>/<repository>"); absent or empty = any.

allowed_repositories := object.get(cfg, "repositories", [])

violations contains {"rule": "repository.not_allowed", "message": msg} if {
	count(allowed_repositories) > 0
	not glob_any(allowed_repositories, image_ref)
	msg := concat("", ["repository ", q(image_ref), " is not allowed"])
}

# --- scopes: the FIRST scope (in config order) whose `images` globs match "<registry>/<repository>" decides.

scopes := [s | some s in object.get(cfg, "scopes", []); is_object(s)]

matching_scopes contains i if {
	some i, s in scopes
	glob_any(object.get(s, "images", []), image_ref)
}

scope_index := min(matching_scopes) if count(matching_scopes) > 0

scope := scopes[scope_index]

covered if scope

default scope_name := null

scope_name := object.get(scope, "name", concat("", ["scopes[", int_str(scope_index), "]"]))

modes := {"enforce", "warn", "dry-run"}

# config.mode is the default for scopes without one and for images no scope covers; default "enforce".
# An unknown mode value falls back to "enforce".
default_mode := m if {
	m := object.get(cfg, "mode", "enforce")
	m in modes
} else := "enforce"

mode := m if {
	m := object.get(scope, "mode", default_mode)
	m in modes
} else := default_mode

# --- scope.no_match: images no scope covers. config.no_match: "deny" (default), "warn" or "allow".

no_match := object.get(cfg, "no_match", "deny")

no_match_message := concat("", ["no policy scope covers ", q(image_ref)])

violations contains {"rule": "scope.no_match", "message": no_match_message} if {
	not covered
	not no_match in {"allow", "warn"}
}

warnings contains {"rule": "scope.no_match", "message": no_match_message} if {
	not covered
	no_match == "warn"
}
