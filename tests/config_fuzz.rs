//! No input makes the `.mill` parser panic: random text, and mutations of the examples.

use mill::config::{self, ClusterSnapshot, Offline};
use mill_crds::{ByteSize, NodeResources};
use proptest::prelude::*;

const EXAMPLES: [&str; 2] = [
    include_str!("../examples/hello.mill"),
    include_str!("../examples/app.mill"),
];

/// Bytes that steer mutations into HCL's and mill's interesting corners.
const SPICY: &[u8] = b"{}[]()\"$%~=,.:-+*/\\#\n\t ${}%{}0123456789_aZ";

/// One way to damage a config.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte { at: usize, mask: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::FlipByte { at, mask }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (
            any::<usize>(),
            prop::collection::vec(prop::sample::select(SPICY), 1..8)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 1usize..80).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let n = bytes.len().max(1);
    match mutation {
        Mutation::FlipByte { at, mask } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b ^= mask;
            }
        }
        Mutation::Truncate { at } => bytes.truncate(at % n),
        Mutation::Insert { at, bytes: new } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Duplicate { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                let copy = bytes[at..end].to_vec();
                bytes.splice(end..end, copy);
            }
        }
    }
}

fn cluster() -> ClusterSnapshot {
    ClusterSnapshot {
        secrets: ["DB_URL".to_string()].into(),
        services: Default::default(),
        nodes: vec![NodeResources {
            cpu: 1.0,
            memory: ByteSize(1 << 30),
        }],
    }
}

/// Parses with both kinds of cluster facts and renders any errors, which must point at
/// lines of the input.
fn parse_all_ways(bytes: &[u8]) {
    for result in [
        config::parse_bytes("fuzz.mill", bytes, &Offline),
        config::parse_bytes("fuzz.mill", bytes, &cluster()),
    ] {
        if let Err(invalid) = result {
            assert!(!invalid.diagnostics.is_empty());
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
            for d in &invalid.diagnostics {
                assert!(d.line >= 1 && d.line <= lines, "{d:?}");
                assert!(d.col >= 1, "{d:?}");
            }
            let _ = invalid.to_string();
        }
    }
}

proptest! {
    #[test]
    fn random_text_never_panics(text in "\\PC*") {
        parse_all_ways(text.as_bytes());
    }

    #[test]
    fn random_hcl_shaped_text_never_panics(
        text in "([a-z_]{1,8}|\"[^\"]{0,12}\"|[{}\\[\\]=,\\n ]|\\$\\{[a-z.()_]{0,20}\\}|[0-9.-]{1,4}){0,60}"
    ) {
        parse_all_ways(text.as_bytes());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        parse_all_ways(&bytes);
    }

    #[test]
    fn mutated_examples_never_panic(
        example in 0..EXAMPLES.len(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = EXAMPLES[example].as_bytes().to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_all_ways(&bytes);
    }
}

#[test]
fn the_examples_themselves_are_valid() {
    for example in EXAMPLES {
        config::parse("example.mill", example, &Offline).unwrap();
    }
}
