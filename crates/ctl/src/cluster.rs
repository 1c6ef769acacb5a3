//! `cluster status` (every node of a Leveret cluster: role, in-sync,
//! addresses, lease, replication lag), `check_if_node_is_quorum_critical`
//! (rabbitmq-diagnostics'), from `/api/nodes` and
//! `/api/health/checks/node-is-quorum-critical`, and
//! `forget_cluster_node` (rabbitmqctl's), `DELETE /api/nodes/{node}`.

use crate::client::Method;
use crate::table::Column;
use crate::{CtlError, Ctx, Format, Outcome};
use serde_json::Value;

const CLUSTER_COLUMNS: &[Column] = &[
    ("node", "name"),
    ("role", "role"),
    ("in_sync", "in_sync"),
    ("advertised_uri", "advertised_uri"),
    ("replication", "replication_address"),
    ("lease_ms", "lease_remaining_ms"),
    ("lag_bytes", "replication_lag_bytes"),
    ("lag_ms", "replication_lag_ms"),
];

impl Ctx<'_> {
    pub(crate) fn cluster(&mut self, what: Option<&str>) -> Result<Outcome, CtlError> {
        match what {
            Some("status") => {}
            other => {
                return Err(CtlError::usage(format!(
                    "cluster takes status, got {}",
                    other.unwrap_or("nothing")
                )))
            }
        }
        let nodes = self.client.get("/nodes", "the nodes")?;
        if self.format == Format::Json {
            self.print_json(&nodes);
            return Ok(Outcome::Ok);
        }
        let rows = nodes.as_array().cloned().unwrap_or_default();
        if rows.iter().all(|n| n.get("role").is_none()) {
            self.out.push_str("not in cluster mode (a single node)\n");
        } else {
            let leader = rows
                .iter()
                .find(|n| n["role"] == "leader")
                .and_then(|n| n["name"].as_str())
                .unwrap_or("none");
            let isr: Vec<&str> = rows
                .iter()
                .filter(|n| n["in_sync"] == true && n["role"] != "leader")
                .filter_map(|n| n["name"].as_str())
                .collect();
            self.out.push_str(&format!(
                "leader: {leader}\nin-sync followers: {}\n",
                if isr.is_empty() {
                    "none".into()
                } else {
                    isr.join(", ")
                }
            ));
        }
        self.print_rows(Value::Array(rows), CLUSTER_COLUMNS, true)?;
        Ok(Outcome::Ok)
    }

    /// `DELETE /api/nodes/leveret@NODE`, sent to the leader.
    pub(crate) fn forget_cluster_node(&mut self, node: &str) -> Result<Outcome, CtlError> {
        let full = if node.contains('@') {
            node.to_string()
        } else {
            format!("leveret@{node}")
        };
        let path = format!("/nodes/{}", crate::client::enc(&full));
        self.client
            .call(Method::Delete, &path, None, &format!("node '{full}'"))?;
        self.done(&format!("{full} forgotten"))
    }

    /// 200 `{"status":"ok"}`, or 503 with the reason: exit 1.
    pub(crate) fn quorum_critical(&mut self) -> Result<Outcome, CtlError> {
        let path = "/health/checks/node-is-quorum-critical";
        let reply = self.client.send(Method::Get, path, None)?;
        if reply.status != 200 && reply.status != 503 {
            self.client.check(&reply, "the quorum-critical check")?;
        }
        let body = reply.json();
        if self.format == Format::Json {
            self.print_json(&body);
        } else if reply.status == 200 {
            self.out.push_str("ok\n");
        } else {
            let reason = body["reason"].as_str().unwrap_or("the check failed");
            self.out.push_str(&format!("failed: {reason}\n"));
        }
        Ok(if reply.status == 200 {
            Outcome::Ok
        } else {
            Outcome::Unhealthy
        })
    }
}
