//! `examples/hyper.rs` over real TCP: the layer on a plain hyper 1 server.

#[allow(dead_code)] // its `main` is not run here
#[path = "../examples/hyper.rs"]
mod example;

use tokio::net::TcpListener;

#[tokio::test]
async fn without_a_key_401_with_the_key_200() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(example::serve(listener));
    let http = reqwest::Client::new();

    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="api""#);

    let res = http
        .get(&url)
        .bearer_auth("sk_demo_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let res = http
        .get(&url)
        .bearer_auth(example::KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "hello, hyper\n");
}
