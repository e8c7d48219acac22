//! Which nodes keep which piece, without a coordinator: weighted rendezvous hashing.
//!
//! Every node computes, for a piece (key, index) and each live node, a score from a hash of
//! the two and the node's weight (the space it offers): `-weight / ln(u)`, `u` the hash mapped
//! into (0, 1). The `copies` highest scores keep the piece. Every node that sees the same live
//! nodes and weights computes the same assignment, and a node's share is proportional to its
//! weight. When a node leaves, only the pieces it kept move (each to the next node in that
//! piece's order), about `1 / nodes` of them; when it returns, the same pieces come back to it
//! and the nodes that took them over are surplus. This is the placement core only; it does not
//! fetch.

/// A node taking part: its identity (repository UUID) and the bytes it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub offered: u64,
}

/// The score of `node` for piece `index` of `key`.
fn score(node: &Node, key: &[u8], index: u64) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&(node.id.len() as u64).to_le_bytes());
    h.update(node.id.as_bytes());
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(&index.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_bytes()[..8]);
    // 53 bits into (0, 1): never 0 (ln) nor 1 (a zero divisor).
    #[allow(clippy::cast_precision_loss)]
    let u = ((u64::from_le_bytes(b) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    #[allow(clippy::cast_precision_loss)]
    let w = node.offered.max(1) as f64;
    -w / u.ln()
}

/// The nodes that keep piece `index` of `key`, best first: `copies` of them (or all, when
/// fewer). Nodes offering nothing keep nothing.
pub fn holders<'a>(nodes: &'a [Node], key: &[u8], index: u64, copies: usize) -> Vec<&'a Node> {
    let mut scored: Vec<(f64, &Node)> =
        nodes.iter().filter(|n| n.offered > 0).map(|n| (score(n, key, index), n)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    scored.into_iter().take(copies).map(|(_, n)| n).collect()
}

/// Whether the node `me` keeps piece `index` of `key`.
pub fn keeps(nodes: &[Node], me: &str, key: &[u8], index: u64, copies: usize) -> bool {
    holders(nodes, key, index, copies).iter().any(|n| n.id == me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn nodes(weights: &[u64]) -> Vec<Node> {
        weights.iter().enumerate().map(|(i, &w)| Node { id: format!("node{i}"), offered: w }).collect()
    }

    #[test]
    fn every_piece_gets_its_copies_in_proportion_to_the_space_offered() {
        let ns = nodes(&[1, 1, 1, 1, 2]);
        let mut count: HashMap<String, usize> = HashMap::new();
        let pieces = 20_000u64;
        for i in 0..pieces {
            let h = holders(&ns, b"K", i, 2);
            assert_eq!(h.len(), 2);
            assert_ne!(h[0].id, h[1].id);
            for n in h {
                *count.entry(n.id.clone()).or_default() += 1;
            }
        }
        // Node 4 offers twice as much: it keeps about twice as many pieces as each other.
        let per_unit = count["node0"] as f64;
        let heavy = count["node4"] as f64 / per_unit;
        assert!((1.5..2.5).contains(&heavy), "{count:?}");
        assert!(holders(&nodes(&[0, 5]), b"K", 1, 2).len() == 1, "nothing offered, nothing kept");
    }

    #[test]
    fn a_node_leaving_moves_only_its_pieces_and_its_return_brings_them_back() {
        let all = nodes(&[1, 1, 1, 1, 1]);
        let without: Vec<Node> = all.iter().filter(|n| n.id != "node2").cloned().collect();
        let pieces = 5000u64;
        let mut moved = 0usize;
        for i in 0..pieces {
            let before: Vec<&str> = holders(&all, b"K", i, 2).iter().map(|n| n.id.as_str()).collect();
            let after: Vec<&str> = holders(&without, b"K", i, 2).iter().map(|n| n.id.as_str()).collect();
            let kept_by_2 = before.contains(&"node2");
            // A piece node 2 did not keep stays where it was; one it kept gets one new holder.
            let new: Vec<&&str> = after.iter().filter(|n| !before.contains(n)).collect();
            assert_eq!(new.len(), usize::from(kept_by_2), "piece {i}: {before:?} -> {after:?}");
            moved += new.len();
            assert!(keeps(&all, "node2", b"K", i, 2) == kept_by_2);
        }
        // About 2/5 of the pieces had a copy on node 2: that many copies move, no more.
        let share = moved as f64 / pieces as f64;
        assert!((0.35..0.45).contains(&share), "{share}");
    }
}
