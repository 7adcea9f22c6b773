//! Bad requests get the right Status and change nothing; a missing or wrong token is 401.

mod common;

use common::{Harness, TOKEN};
use serde_json::{json, Value};

const SERVICES: &str = "/apis/mill.dev/v1/namespaces/default/services";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(harness: &Harness) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: harness.url.clone(),
        }
    }

    async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    async fn service_count(&self) -> usize {
        let list: Value = self
            .http
            .get(format!("{}{SERVICES}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["items"].as_array().unwrap().len()
    }
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "mill.dev/v1", "kind": "Service",
           "metadata": {"name": name}, "spec": {"image": "img:1", "port": 80}})
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_the_right_token_are_unauthorized() {
    let harness = Harness::start();
    let http = reqwest::Client::new();
    let url = format!("{}{SERVICES}", harness.url);
    for token in [None, Some("wrong-token"), Some("")] {
        let mut req = http.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "token {token:?}");
        let status: Value = resp.json().await.unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Unauthorized");
    }
    let create = http
        .post(&url)
        .json(&service("sneaky"))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 401);
    assert!(harness
        .stored("mill.dev/services", Some("default"), "sneaky")
        .is_none());
    // Health probes are open.
    let healthz = http
        .get(format!("{}/healthz", harness.url))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_invalid_objects_are_rejected_and_nothing_is_stored() {
    let harness = Harness::start();
    let client = Client::new(&harness);
    let json = "application/json";
    let big_image = "x".repeat(1600 * 1024);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            json,
            b"{\"apiVersion\": \"mill.dev/v1\",".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "malformed YAML",
            "application/yaml",
            b"apiVersion: [unclosed".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "wrong kind for the URL",
            json,
            serde_json::to_vec(&json!({"apiVersion": "mill.dev/v1", "kind": "Task",
                "metadata": {"name": "t"}, "spec": {"image": "i"}}))
            .unwrap(),
            400,
            "BadRequest",
        ),
        (
            "wrong apiVersion",
            json,
            serde_json::to_vec(&json!({"apiVersion": "apps/v1", "kind": "Service",
                "metadata": {"name": "w"}, "spec": {"image": "i", "port": 80}}))
            .unwrap(),
            400,
            "BadRequest",
        ),
        (
            "invalid name",
            json,
            serde_json::to_vec(&service("Not_A_Name")).unwrap(),
            422,
            "Invalid",
        ),
        (
            "spec of the wrong type",
            json,
            serde_json::to_vec(&json!({"apiVersion": "mill.dev/v1", "kind": "Service",
                "metadata": {"name": "p"}, "spec": {"image": "i", "port": "eighty"}}))
            .unwrap(),
            422,
            "Invalid",
        ),
        (
            "object over 1.5 MiB",
            json,
            serde_json::to_vec(&json!({"apiVersion": "mill.dev/v1", "kind": "Service",
                "metadata": {"name": "big"}, "spec": {"image": big_image, "port": 80}}))
            .unwrap(),
            413,
            "RequestEntityTooLarge",
        ),
    ];
    for (what, content_type, body, code, reason) in cases {
        let (got, status) = client.post(SERVICES, content_type, body).await;
        assert_eq!(got, code, "{what}: {status}");
        assert_eq!(status["kind"], "Status", "{what}");
        assert_eq!(status["reason"], reason, "{what}: {status}");
        assert!(
            status["message"].as_str().is_some_and(|m| m.len() > 10),
            "{what}: a Status needs a message a person can act on: {status}"
        );
        assert_eq!(client.service_count().await, 0, "{what} stored something");
    }
    // Strict field validation names the unknown field.
    let mut unknown = service("strict");
    unknown["spec"]["imagee"] = json!("typo");
    let (got, status) = client
        .post(
            &format!("{SERVICES}?fieldValidation=Strict"),
            json,
            serde_json::to_vec(&unknown).unwrap(),
        )
        .await;
    assert!(got == 400 || got == 422, "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("imagee"),
        "{status}"
    );
    assert_eq!(client.service_count().await, 0);
}
