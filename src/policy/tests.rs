use super::path;
use super::*;

fn table() -> RouteTable {
    let mut t = RouteTable::default();
    t.set_policy(Route::from("/health"), RoutePolicy::Public)
        .unwrap();
    t.set_policy(Route::from("/public/{*rest}"), RoutePolicy::Public)
        .unwrap();
    t.set_policy(Route::from("/docs/{page}"), RoutePolicy::Optional)
        .unwrap();
    t.set_policy(Route::from((Method::GET, "/v1/keys")), RoutePolicy::Public)
        .unwrap();
    t.set_bypass(Route::from("/v1/keys")).unwrap();
    t
}

fn resolve(t: &RouteTable, method: Method, path: &str) -> Resolved {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    t.resolve(&req)
}

#[test]
fn templates_match_canonical_paths() {
    let t = table();
    let p = |path| resolve(&t, Method::GET, path).policy;
    assert_eq!(p("/health"), RoutePolicy::Public);
    assert_eq!(p("/health?x=1"), RoutePolicy::Public);
    assert_eq!(p("/public/a/b.css"), RoutePolicy::Public);
    assert_eq!(p("/public"), RoutePolicy::Required);
    assert_eq!(p("/docs/intro"), RoutePolicy::Optional);
    assert_eq!(p("/docs/intro/more"), RoutePolicy::Required);
    assert_eq!(p("/docs"), RoutePolicy::Required);
    assert_eq!(p("/other"), RoutePolicy::Required);
    assert_eq!(p("/healthz"), RoutePolicy::Required);
}

#[test]
fn path_tricks_never_relax_the_policy() {
    let t = table();
    for path in [
        "//health",
        "/health/",
        "/Health",
        "/HEALTH",
        "/health;x=1",
        "/health%3b",
        "/public/../v1/secret",
        "/public/./x",
        "/public/%2e%2e/v1/secret",
        "/public/%2E%2E/v1/secret",
        "/public%2fx",
        "/public/a%2F..%2Fb",
        "/public/a%5c..",
        "/public/a%252e",
        "/public//x",
        "/public/x\\..\\y",
        "/docs/a%00",
        "/docs/%zz",
        // One spelling per byte (found by the `route_path` fuzz target).
        "/public/%61dmin",
        "/public/a%21b",
        "/public/caf%c3%a9",
        "/public/{x}",
        "/public/a|b",
        "/docs/%69ntro",
    ] {
        assert_eq!(
            resolve(&t, Method::GET, path).policy,
            RoutePolicy::Required,
            "{path}"
        );
    }
}

#[test]
fn another_spelling_never_reaches_a_looser_rule() {
    // Found by the `route_path` fuzz target: a decoding router reads
    // `/users/%6De` as `/users/me`, which is Required, while the path
    // matched `/users/{id}`, which is Public. Each path here had a
    // looser policy than the path a router reads it as.
    let mut t = RouteTable::default();
    t.set_policy(Route::from("/users/{id}"), RoutePolicy::Public)
        .unwrap();
    t.set_policy(Route::from("/users/me"), RoutePolicy::Required)
        .unwrap();
    t.set_policy(Route::from("/x/{p}"), RoutePolicy::Public)
        .unwrap();
    t.set_policy(Route::from("/x/%7B"), RoutePolicy::Required)
        .unwrap();
    t.set_policy(Route::from("/x/a!b"), RoutePolicy::Required)
        .unwrap();
    t.set_policy(Route::from("/x/caf%C3%A9"), RoutePolicy::Required)
        .unwrap();
    let p = |path| resolve(&t, Method::GET, path).policy;
    for path in [
        "/users/%6De",
        "/users/m%65",
        "/x/{",
        "/x/a%21b",
        "/x/caf%c3%a9",
    ] {
        assert_eq!(p(path), RoutePolicy::Required, "{path}");
    }
    // The one spelling still matches, a rule and its parameters.
    assert_eq!(p("/users/42"), RoutePolicy::Public);
    assert_eq!(p("/x/%7B"), RoutePolicy::Required);
    assert_eq!(p("/x/caf%C3%A9"), RoutePolicy::Required);
    assert_eq!(p("/x/%C3%A9t%C3%A9"), RoutePolicy::Public);
    assert_eq!(p("/x/a%20b"), RoutePolicy::Public);
    assert_eq!(p("/x/it's(1)+2,3:4@5=6*7$8&9~_-."), RoutePolicy::Public);
}

#[test]
fn method_rules_override_any_method_rules() {
    let t = table();
    let get = resolve(&t, Method::GET, "/v1/keys");
    assert_eq!(get.policy, RoutePolicy::Public);
    assert!(get.bypass_cache);
    assert_eq!(
        resolve(&t, Method::HEAD, "/v1/keys").policy,
        RoutePolicy::Public
    );
    let post = resolve(&t, Method::POST, "/v1/keys");
    assert_eq!(post.policy, RoutePolicy::Required);
    assert!(post.bypass_cache);
}

#[test]
fn the_most_specific_template_decides_whatever_the_order() {
    let mut t = RouteTable::default();
    t.set_policy(
        Route::from((Method::GET, "/users/{id}")),
        RoutePolicy::Public,
    )
    .unwrap();
    t.set_policy(Route::from("/users/me"), RoutePolicy::Required)
        .unwrap();
    t.set_policy(Route::from("/files/{*path}"), RoutePolicy::Public)
        .unwrap();
    t.set_policy(Route::from("/files/private/{name}"), RoutePolicy::Required)
        .unwrap();
    t.set_policy(Route::from("/docs/{page}"), RoutePolicy::Optional)
        .unwrap();
    t.set_policy(Route::from("/docs/{*rest}"), RoutePolicy::Public)
        .unwrap();
    let p = |path| resolve(&t, Method::GET, path).policy;
    assert_eq!(p("/users/me"), RoutePolicy::Required);
    assert_eq!(p("/users/42"), RoutePolicy::Public);
    assert_eq!(
        resolve(&t, Method::POST, "/users/42").policy,
        RoutePolicy::Required
    );
    assert_eq!(p("/files/private/x"), RoutePolicy::Required);
    assert_eq!(p("/files/public/x"), RoutePolicy::Public);
    assert_eq!(p("/docs/intro"), RoutePolicy::Optional);
    assert_eq!(p("/docs/a/b"), RoutePolicy::Public);
}

#[test]
fn costs_follow_the_most_specific_template_and_default_to_one() {
    let mut t = RouteTable::default();
    t.set_cost(Route::from("/v1/reports/{*rest}"), 10).unwrap();
    t.set_cost(Route::from("/v1/reports/cheap"), 2).unwrap();
    t.set_cost(Route::from((Method::POST, "/v1/reports/cheap")), 5)
        .unwrap();
    t.set_cost(Route::from("/v1/usage"), 0).unwrap();
    let c = |m, path| resolve(&t, m, path).cost;
    assert_eq!(c(Method::GET, "/v1/reports/big/one"), 10);
    assert_eq!(c(Method::GET, "/v1/reports/cheap"), 2);
    assert_eq!(c(Method::POST, "/v1/reports/cheap"), 5);
    assert_eq!(c(Method::GET, "/v1/usage"), 0, "exempt");
    assert_eq!(c(Method::GET, "/v1/other"), 1);
    assert_eq!(
        c(Method::GET, "/v1/usage/"),
        1,
        "a path that is not canonical is never exempt"
    );
}

#[test]
fn bad_templates_are_refused() {
    let mut t = RouteTable::default();
    for bad in ["health", "/a/{*rest}/b", "/a/{}", "/a/x{id}", "//a"] {
        assert!(
            t.set_policy(Route::from(bad), RoutePolicy::Public).is_err(),
            "{bad}"
        );
    }
    assert!(t.set_policy(Route::from("/"), RoutePolicy::Public).is_ok());
    assert_eq!(resolve(&t, Method::GET, "/").policy, RoutePolicy::Public);
}

fn scopes_of(t: &RouteTable, method: Method, path: &str) -> Option<String> {
    let scopes = resolve(t, method, path).scopes?;
    Some(t.requirement(scopes).scopes.to_string())
}

#[test]
fn scope_requirements_follow_the_most_specific_template_and_the_method() {
    let mut t = RouteTable::default();
    t.set_scopes(Route::from("/v1/keys"), Scopes::one("admin"))
        .unwrap();
    t.set_scopes(
        Route::from((Method::GET, "/v1/keys")),
        Scopes::any(["keys:read", "admin"]),
    )
    .unwrap();
    t.set_scopes(
        Route::from("/v1/reports/{*rest}"),
        Scopes::one("reports:read"),
    )
    .unwrap();
    t.set_scopes(Route::from("/v1/reports/public"), Scopes::one("anyone"))
        .unwrap();
    t.set_policy(Route::from("/v1/keys"), RoutePolicy::Optional)
        .unwrap();
    let s = |m, path| scopes_of(&t, m, path);
    assert_eq!(s(Method::POST, "/v1/keys").as_deref(), Some("admin"));
    assert_eq!(
        s(Method::GET, "/v1/keys").as_deref(),
        Some("keys:read OR admin")
    );
    assert_eq!(
        s(Method::HEAD, "/v1/keys").as_deref(),
        Some("keys:read OR admin")
    );
    assert_eq!(
        s(Method::GET, "/v1/reports/a/b").as_deref(),
        Some("reports:read")
    );
    assert_eq!(
        s(Method::GET, "/v1/reports/public").as_deref(),
        Some("anyone")
    );
    assert_eq!(s(Method::GET, "/v1/other"), None);
    // The other settings of the rule are kept.
    assert_eq!(
        resolve(&t, Method::POST, "/v1/keys").policy,
        RoutePolicy::Optional
    );
}

#[test]
fn a_path_spelled_otherwise_needs_every_requirement() {
    let mut t = RouteTable::default();
    t.set_scopes(Route::from("/v1/keys"), Scopes::one("admin"))
        .unwrap();
    t.set_scopes(
        Route::from("/v1/reports"),
        Scopes::any(["reports:read", "admin"]),
    )
    .unwrap();
    t.set_scopes(
        Route::from((Method::DELETE, "/v1/keys/{id}")),
        Scopes::one("keys:delete"),
    )
    .unwrap();
    let every = "admin AND (reports:read OR admin) AND keys:delete";
    for path in [
        "//v1/keys",
        "/v1/keys/",
        "/v1/%6Beys",
        "/v1/keys;x",
        "/v1/./keys",
        "/v1/x/../keys",
        "/v1/keys%2F",
        "/v1/reports/",
        "/v1/keys/1/",
    ] {
        assert_eq!(
            scopes_of(&t, Method::GET, path).as_deref(),
            Some(every),
            "{path}"
        );
    }
    // The canonical spellings: their own rule, or none.
    assert_eq!(
        scopes_of(&t, Method::GET, "/v1/keys").as_deref(),
        Some("admin")
    );
    assert_eq!(
        scopes_of(&t, Method::DELETE, "/v1/keys/7").as_deref(),
        Some("keys:delete")
    );
    assert_eq!(scopes_of(&t, Method::GET, "/v1/keys/7"), None);
    assert_eq!(scopes_of(&t, Method::GET, "/v1/public"), None);
}

#[test]
fn a_table_without_requirements_asks_for_no_scope_whatever_the_path() {
    let t = table();
    for path in ["//health", "/v1/keys/", "/x"] {
        assert_eq!(resolve(&t, Method::GET, path).scopes, None, "{path}");
    }
}

#[test]
fn a_looser_broader_rule_never_switches_a_requirement_off() {
    let mut t = RouteTable::default();
    t.set_policy(Route::from("/files/{*path}"), RoutePolicy::Public)
        .unwrap();
    t.set_scopes(Route::from("/files/secret"), Scopes::one("admin"))
        .unwrap();
    t.set_policy(Route::from("/docs/{*rest}"), RoutePolicy::Optional)
        .unwrap();
    t.set_scopes(Route::from("/docs/admin"), Scopes::one("admin"))
        .unwrap();
    // On its own template a policy said outright decides, for every method
    // or for its own.
    t.set_scopes(Route::from("/open"), Scopes::one("x"))
        .unwrap();
    t.set_policy(Route::from("/open"), RoutePolicy::Optional)
        .unwrap();
    t.set_scopes(Route::from("/mixed"), Scopes::one("x"))
        .unwrap();
    t.set_policy(Route::from((Method::GET, "/mixed")), RoutePolicy::Public)
        .unwrap();
    let r = |m, path| resolve(&t, m, path);
    let secret = r(Method::GET, "/files/secret");
    assert_eq!(secret.policy, RoutePolicy::Required);
    assert!(secret.scopes.is_some());
    assert_eq!(r(Method::GET, "/files/other").policy, RoutePolicy::Public);
    assert_eq!(r(Method::GET, "/docs/admin").policy, RoutePolicy::Required);
    assert_eq!(r(Method::GET, "/docs/intro").policy, RoutePolicy::Optional);
    assert_eq!(r(Method::GET, "/open").policy, RoutePolicy::Optional);
    assert_eq!(r(Method::GET, "/mixed").policy, RoutePolicy::Public);
    assert_eq!(r(Method::POST, "/mixed").policy, RoutePolicy::Required);
}

#[test]
fn a_template_has_the_shape_of_a_rule_whatever_its_parameters_are_named() {
    let shape = |rule: &str, template: &str| {
        path::same_shape(&path::parse_template(rule).unwrap(), template)
    };
    assert!(shape("/v1/keys/{id}", "/v1/keys/{key_id}"));
    assert!(shape("/files/{*path}", "/files/{*rest}"));
    assert!(shape("/", "/"));
    assert!(!shape("/v1/keys/{id}", "/v1/keys/{*id}"));
    assert!(!shape("/files/{*path}", "/files/{path}"));
    assert!(!shape("/v1/keys/{id}", "/v1/keys"));
    assert!(!shape("/v1/keys/{id}", "/v1/keys/{id}/roll"));
    assert!(!shape("/v1/keys/{id}", "/v1/keys/7"));
    assert!(!shape("/v1/keys/{id}", "/v1/keys/{}"));
    assert!(!shape("/v1/keys/{id}", "v1/keys/{id}"));
}

#[test]
fn the_answer_for_every_requirement_names_none() {
    let mut t = RouteTable::default();
    t.set_scopes(Route::from("/v1/keys"), Scopes::one("admin"))
        .unwrap();
    let every = resolve(&t, Method::GET, "//v1/keys").scopes.unwrap();
    let requirement = t.requirement(every);
    assert_eq!(requirement.rule, None);
    assert!(requirement.challenge.is_empty());
    let own = resolve(&t, Method::GET, "/v1/keys").scopes.unwrap();
    assert_eq!(t.requirement(own).rule.as_deref(), Some("admin"));
}
