//! `Router::route` must not allocate: it runs once per connection on every edge.
//!
//! A counting global allocator counts this thread's allocations around the lookups.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

mod common;

struct Counting;

thread_local! {
    // Const-initialized and without a destructor, so using it inside the allocator cannot
    // itself allocate or recurse.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn route_does_not_allocate() {
    let ring = common::router(
        r#"
        default = "center"
        sets = [{ name = "a", pool = "pa" }, { name = "b", pool = "pb", weight = 2 }]
        overrides = { "vip" = "a", "ops" = "center" }
        "#,
    );
    let buckets = common::router(
        r#"
        strategy = "buckets"
        default = "center"
        buckets = 100
        sets = [{ name = "a", pool = "pa" }, { name = "b", pool = "pb" }]
        bucket_map = [{ range = "0-49", set = "a" }, { range = "50-99", set = "b" }]
        overrides = { "vip" = "b" }
        "#,
    );
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("user-{i}"))
        .chain(["", "vip", "ops", "12345", "müller"].map(String::from))
        .collect();
    let mut seen = 0usize;
    let n = allocations_during(|| {
        for router in [&ring, &buckets] {
            seen += router.route(None).pool.len();
            for key in &keys {
                seen += router.route(Some(key)).pool.len();
            }
        }
    });
    assert_eq!(n, 0, "route allocated {n} times");
    assert!(seen > 0);
    // The counter works: building a router allocates.
    assert!(allocations_during(|| drop(common::router("default = \"c\""))) > 0);
}
