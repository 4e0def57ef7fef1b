//! Graph algorithms on dense node indices: strongly connected components and shortest cycles.
//!
//! Nodes are `0..n`, numbered in plugin-name order, and every adjacency list is sorted, so the
//! results depend only on the graph, never on input order.

use std::collections::VecDeque;

/// Tarjan's strongly connected components of `adj` (an edge `v → w` means `v` depends on `w`).
///
/// Components come out in reverse topological order: a component is emitted after every
/// component it can reach, so dependencies come before their dependants. Each component is
/// sorted. Iterative, so a long dependency chain cannot overflow the stack.
pub(crate) fn strongly_connected(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let mut t = Tarjan {
        index: vec![UNVISITED; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        calls: Vec::new(),
        next_index: 0,
    };
    let mut components = Vec::new();
    for root in 0..n {
        if t.index[root] != UNVISITED {
            continue;
        }
        t.visit(root);
        while let Some(&(v, edge)) = t.calls.last() {
            if let Some(&w) = adj[v].get(edge) {
                let top = t.calls.len() - 1;
                t.calls[top].1 += 1;
                if t.index[w] == UNVISITED {
                    t.visit(w);
                } else if t.on_stack[w] {
                    t.low[v] = t.low[v].min(t.index[w]);
                }
                continue;
            }
            t.calls.pop();
            if let Some(&(parent, _)) = t.calls.last() {
                t.low[parent] = t.low[parent].min(t.low[v]);
            }
            if t.low[v] == t.index[v] {
                let mut component = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                component.sort_unstable();
                components.push(component);
            }
        }
    }
    components
}

const UNVISITED: usize = usize::MAX;

/// Tarjan's bookkeeping.
struct Tarjan {
    index: Vec<usize>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    /// The explicit call stack: (node, position of the next edge to follow).
    calls: Vec<(usize, usize)>,
    next_index: usize,
}

impl Tarjan {
    fn visit(&mut self, v: usize) {
        self.index[v] = self.next_index;
        self.low[v] = self.next_index;
        self.next_index += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        self.calls.push((v, 0));
    }
}

/// The shortest cycle through `start` using only nodes for which `inside` holds, as the list
/// of nodes from `start` (the edge from the last node back to `start` closes it). Ties are
/// broken by node order. `None` if `start` is on no such cycle.
pub(crate) fn shortest_cycle(
    adj: &[Vec<usize>],
    start: usize,
    inside: impl Fn(usize) -> bool,
) -> Option<Vec<usize>> {
    let mut parent = vec![None; adj.len()];
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &adj[v] {
            if w == start {
                let mut cycle = vec![v];
                let mut at = v;
                while let Some(p) = parent[at] {
                    cycle.push(p);
                    at = p;
                }
                cycle.reverse();
                return Some(cycle);
            }
            if inside(w) && parent[w].is_none() {
                parent[w] = Some(v);
                queue.push_back(w);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_come_dependencies_first() {
        // 0 → 1 → 2 → 1, 3 → 3, 4 alone.
        let adj = vec![vec![1], vec![2], vec![1], vec![3], vec![]];
        assert_eq!(
            strongly_connected(&adj),
            vec![vec![1, 2], vec![0], vec![3], vec![4]]
        );
    }

    #[test]
    fn shortest_cycle_prefers_short_then_small() {
        // 0 → 1 → 0 and 0 → 2 → 3 → 0; from 2 the only way back is through 3 and 0.
        let adj = vec![vec![1, 2], vec![0], vec![3], vec![0]];
        assert_eq!(shortest_cycle(&adj, 0, |_| true), Some(vec![0, 1]));
        assert_eq!(shortest_cycle(&adj, 2, |_| true), Some(vec![2, 3, 0]));
        assert_eq!(shortest_cycle(&adj, 2, |v| v != 0), None);
        assert_eq!(shortest_cycle(&[vec![0]], 0, |_| true), Some(vec![0]));
    }
}
