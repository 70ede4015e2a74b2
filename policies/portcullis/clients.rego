# Client identity rules: scope.clients says which identities may pull the scope's images.
#
#   "clients": {"users": [glob], "groups": [glob], "methods": ["basic", "token", "mtls", "oidc", "anonymous"],
#               "anonymous": bool}
#
# With `clients` on the deciding scope, the request's client (input.request.client: user, groups, method) must
# match one of `users` (globs on the user name, e.g. SPIFFE IDs "spiffe://example.org/ns/team-a/**") or one of
# `groups`, or be anonymous where `anonymous: true`; and when `methods` is given, its method must be listed. A scope
# without `clients` lets every client through (the quick start). Applies to manifests and accessories alike.
# Exceptions never relax it: they are for vulnerable or unsigned images, not for access.
package portcullis

default client := {}

client := input.request.client if is_object(input.request.client)

client_user := u if {
	u := client.user
	is_string(u)
	u != ""
}

client_groups := {g | some g in object.get(client, "groups", []); is_string(g)}

client_method := m if {
	m := client.method
	is_string(m)
} else := "anonymous"

scope_clients := scope.clients if is_object(scope.clients)

client_method_ok(c) if count(object.get(c, "methods", [])) == 0

client_method_ok(c) if client_method in object.get(c, "methods", [])

client_named(c) if glob_any(object.get(c, "users", []), client_user)

client_named(c) if {
	some g in client_groups
	glob_any(object.get(c, "groups", []), g)
}

client_named(c) if {
	object.get(c, "anonymous", false) == true
	client_method == "anonymous"
}

client_allowed(c) if {
	client_method_ok(c)
	client_named(c)
}

client_desc := concat("", [q(client_user), groups_desc, " via ", client_method]) if client_user

else := concat("", ["anonymous", " via ", client_method])

groups_desc := concat("", [" (groups ", concat(", ", sort(client_groups)), ")"]) if count(client_groups) > 0

else := ""

allowed_desc(c) := concat("; ", [x |
	some x in [
		concat("", ["users ", quoted_list(object.get(c, "users", []))]),
		concat("", ["groups ", quoted_list(object.get(c, "groups", []))]),
	]
	not endswith(x, " ")
])

violations contains {"rule": "client.not_allowed", "message": msg} if {
	c := scope_clients
	not client_allowed(c)
	msg := concat("", ["client ", client_desc, " may not pull ", q(image_ref), " (scope ", q(scope_name), " allows ", allowed_or_none(c), ")"])
}

allowed_or_none(c) := d if {
	d := allowed_desc(c)
	d != ""
} else := "no client"
