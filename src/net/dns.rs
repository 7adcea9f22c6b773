//! The node's DNS server (SPEC §5): authoritative for `mill.`, answered from the routing
//! table's current snapshot (so answers change the moment the table does), every other
//! name forwarded over UDP to the host's upstream resolvers.
//!
//! Zone `mill.`:
//! - `NAME.mill` (namespace `default`) and `NAME.NS.mill`: A → the service's VIP; SRV →
//!   one record per routed alloc (`0 1 <host-port> <alloc>.mill.`, the alloc's A record in
//!   the additional section);
//! - `<alloc-id>.mill` / `<alloc-id>.NS.mill` (task ids are alloc names): A → the
//!   alloc's node address.
//!
//! Answers carry TTL 0: a routing change must not be hidden by a cache.

use super::table::{Name as Key, Routing, RoutingTable};
use async_trait::async_trait;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The zone mill answers for.
const ZONE: &str = "mill.";

/// How the DNS server is set up.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Where other names go (from `/etc/resolv.conf`).
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream may take (`MILL_DNS_FORWARD_TIMEOUT_MS`); also the TCP idle
    /// timeout.
    pub forward_timeout: Duration,
}

/// Binds UDP and TCP on `config.addr` and serves until the process ends.
pub async fn serve(config: DnsConfig, routing: Routing) -> std::io::Result<()> {
    let udp = tokio::net::UdpSocket::bind(config.addr).await?;
    let tcp = tokio::net::TcpListener::bind(config.addr).await?;
    let handler = Handler {
        routing,
        zone: Name::from_ascii(ZONE).map_err(std::io::Error::other)?,
        upstreams: Arc::new(config.upstreams),
        forward_timeout: config.forward_timeout,
    };
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, config.forward_timeout.max(Duration::from_secs(5)), 64);
    tokio::spawn(async move {
        if let Err(err) = server.block_until_done().await {
            tracing::error!("the DNS server stopped: {err}");
        }
    });
    Ok(())
}

/// The nameservers of a `resolv.conf`, without `own` (mill may be the host's resolver).
pub fn upstreams(resolv_conf: &str, own: SocketAddr) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|addr| *addr != own)
        .collect()
}

struct Handler {
    routing: Routing,
    zone: Name,
    upstreams: Arc<Vec<SocketAddr>>,
    forward_timeout: Duration,
}

/// What a name in the zone is.
#[derive(Debug, PartialEq)]
enum Answer {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NoData,
    NxDomain,
}

#[async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let error = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return sent(response.send_response(error).await, request);
        };
        let name: Name = info.query.name().into();
        if !self.zone.zone_of(&name) {
            return self.forward(request, response).await;
        }
        let table = self.routing.load();
        let answer = lookup(&table, &name, info.query.query_type());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let soa = [self.soa()];
        let sent_ = match answer {
            Answer::Records {
                answers,
                additionals,
            } => {
                let message = builder.build(metadata, &answers, [], [], &additionals);
                response.send_response(message).await
            }
            Answer::NoData => {
                let message = builder.build(metadata, [], &soa, [], []);
                response.send_response(message).await
            }
            Answer::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                let message = builder.build(metadata, [], &soa, [], []);
                response.send_response(message).await
            }
        };
        sent(sent_, request)
    }
}

impl Handler {
    fn soa(&self) -> Record {
        let mname = Name::from_ascii("ns.mill.").unwrap_or_else(|_| self.zone.clone());
        let rname = Name::from_ascii("hostmaster.mill.").unwrap_or_else(|_| self.zone.clone());
        Record::from_rdata(
            self.zone.clone(),
            0,
            RData::SOA(SOA::new(mname, rname, 1, 60, 60, 60, 0)),
        )
    }

    /// Sends the raw query to each upstream in turn; relays the first answer.
    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        for upstream in self.upstreams.iter() {
            match tokio::time::timeout(
                self.forward_timeout,
                exchange(*upstream, request.as_slice()),
            )
            .await
            {
                Ok(Ok(answer)) => {
                    let mut metadata = answer.metadata;
                    metadata.id = request.metadata.id;
                    let message = builder.build(
                        metadata,
                        &answer.answers,
                        &answer.authorities,
                        [],
                        &answer.additionals,
                    );
                    return sent(response.send_response(message).await, request);
                }
                Ok(Err(err)) => tracing::debug!("DNS upstream {upstream}: {err}"),
                Err(_) => tracing::debug!("DNS upstream {upstream} timed out"),
            }
        }
        let error = builder.error_msg(&request.metadata, ResponseCode::ServFail);
        sent(response.send_response(error).await, request)
    }
}

/// One UDP exchange with an upstream resolver.
async fn exchange(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Message> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; 65_535];
    let n = socket.recv(&mut buffer).await?;
    Message::from_vec(&buffer[..n]).map_err(std::io::Error::other)
}

fn sent(
    result: Result<ResponseInfo, hickory_server::net::NetError>,
    request: &Request,
) -> ResponseInfo {
    match result {
        Ok(info) => info,
        Err(err) => {
            tracing::debug!("DNS: cannot send an answer to {}: {err}", request.src());
            let mut header = hickory_server::proto::op::Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: Default::default(),
            };
            header.metadata.response_code = ResponseCode::ServFail;
            header.into()
        }
    }
}

/// The answer for `name` (inside the zone) of type `kind`, from `table`.
fn lookup(table: &RoutingTable, name: &Name, kind: RecordType) -> Answer {
    let lower = LowerName::from(name).to_string();
    let labels: Vec<&str> = lower
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .collect();
    let (first, namespace) = match labels.as_slice() {
        [first, "mill"] => (*first, "default"),
        [first, ns, "mill"] => (*first, *ns),
        ["mill"] => return Answer::NoData,
        _ => return Answer::NxDomain,
    };
    let key = Key {
        namespace: namespace.to_string(),
        name: first.to_string(),
    };
    if let Some(service) = table.services.get(&key) {
        return match kind {
            RecordType::A | RecordType::ANY => match service.vip {
                Some(vip) => Answer::Records {
                    answers: vec![Record::from_rdata(name.clone(), 0, RData::A(A(vip)))],
                    additionals: Vec::new(),
                },
                None => Answer::NoData,
            },
            RecordType::SRV => {
                let mut answers = Vec::new();
                let mut additionals = Vec::new();
                for backend in &service.backends {
                    let Ok(target) = alloc_name(&backend.alloc) else {
                        continue;
                    };
                    let srv = SRV::new(0, 1, backend.address.port(), target.clone());
                    answers.push(Record::from_rdata(name.clone(), 0, RData::SRV(srv)));
                    if let IpAddr::V4(ip) = backend.address.ip() {
                        additionals.push(Record::from_rdata(target, 0, RData::A(A(ip))));
                    }
                }
                if answers.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records {
                        answers,
                        additionals,
                    }
                }
            }
            _ => Answer::NoData,
        };
    }
    match table.allocs.get(&key) {
        Some(IpAddr::V4(ip)) if matches!(kind, RecordType::A | RecordType::ANY) => {
            Answer::Records {
                answers: vec![Record::from_rdata(name.clone(), 0, RData::A(A(*ip)))],
                additionals: Vec::new(),
            }
        }
        Some(_) => Answer::NoData,
        None => Answer::NxDomain,
    }
}

/// `<alloc>.mill.` (default namespace) or `<alloc>.<ns>.mill.`.
fn alloc_name(alloc: &Key) -> Result<Name, hickory_server::proto::ProtoError> {
    if alloc.namespace == "default" {
        Name::from_ascii(format!("{}.{ZONE}", alloc.name))
    } else {
        Name::from_ascii(format!("{}.{}.{ZONE}", alloc.name, alloc.namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_the_nameservers_of_resolv_conf_but_this_server() {
        let conf = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver 127.0.0.53\nnameserver ::1\noptions ndots:1\n";
        let own: SocketAddr = "127.0.0.53:53".parse().unwrap();
        assert_eq!(
            upstreams(conf, own),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn names_outside_mill_are_forwarded_upstream() {
        // A fake upstream answering every A query with 192.0.2.7.
        let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((n, from)) = upstream.recv_from(&mut buffer).await {
                let query = Message::from_vec(&buffer[..n]).unwrap();
                let mut answer = query.clone();
                answer.metadata.message_type = hickory_server::proto::op::MessageType::Response;
                let name = query.queries[0].name().clone();
                answer.answers.push(Record::from_rdata(
                    name,
                    60,
                    RData::A(A([192, 0, 2, 7].into())),
                ));
                upstream
                    .send_to(&answer.to_vec().unwrap(), from)
                    .await
                    .unwrap();
            }
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = DnsConfig {
            addr,
            upstreams: vec![upstream_addr],
            forward_timeout: Duration::from_secs(5),
        };
        serve(config, Routing::fixed(RoutingTable::default()))
            .await
            .unwrap();
        let mut query = Message::query();
        query.add_query(hickory_server::proto::op::Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&query.to_vec().unwrap(), addr)
            .await
            .unwrap();
        let mut buffer = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buffer))
            .await
            .expect("an answer")
            .unwrap();
        let answer = Message::from_vec(&buffer[..n]).unwrap();
        assert_eq!(answer.metadata.id, query.metadata.id);
        let ips: Vec<_> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(ips, vec![std::net::Ipv4Addr::new(192, 0, 2, 7)]);
    }

    #[test]
    fn names_outside_services_and_allocs_do_not_exist() {
        let table = RoutingTable::default();
        let name = Name::from_ascii("nothing.mill.").unwrap();
        assert_eq!(lookup(&table, &name, RecordType::A), Answer::NxDomain);
        let name = Name::from_ascii("a.b.c.mill.").unwrap();
        assert_eq!(lookup(&table, &name, RecordType::A), Answer::NxDomain);
        let name = Name::from_ascii("mill.").unwrap();
        assert_eq!(lookup(&table, &name, RecordType::A), Answer::NoData);
    }
}
