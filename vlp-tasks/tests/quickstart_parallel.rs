//! `Plan::parallel_arms`: the from-scratch and the pre-trained run of a task side by side give
//! exactly the results of the same runs one after the other (each run is seeded, builds its
//! model under a lock, and SNLI-VE fine-tuning draws nothing from torch's generator).
use tch::Device;
use vlp_tasks::quickstart::runner::TaskKind;
use vlp_tasks::quickstart::{run_plan_with, Plan, RunOptions};

#[test]
fn side_by_side_runs_match_sequential_runs() {
    tch::set_num_threads(1);
    let tmp = std::env::temp_dir().join(format!("vlp-quickstart-par-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let shapes = tmp.join("shapes");
    let ve_only = RunOptions {
        tasks: vec![TaskKind::Ve],
        pretrained: None,
    };
    let mut plan = Plan::test(0);
    plan.ve.steps = 30;
    plan.parallel_arms = true;
    let first = run_plan_with(&plan, &tmp.join("a"), &shapes, None, Device::Cpu, &ve_only).unwrap();
    let again = RunOptions {
        pretrained: Some(tmp.join("a").join("pretrain")),
        ..ve_only
    };
    plan.parallel_arms = false;
    let seq = run_plan_with(&plan, &tmp.join("b"), &shapes, None, Device::Cpu, &again).unwrap();
    let (a, b) = (&first.tasks["ve"], &seq.tasks["ve"]);
    assert_eq!(a.from_scratch, b.from_scratch, "{a:?}\n{b:?}");
    assert_eq!(a.pretrained, b.pretrained, "{a:?}\n{b:?}");
    assert_eq!(a.from_scratch_details, b.from_scratch_details);
    assert_eq!(a.pretrained_details, b.pretrained_details);
    // The thread count is restored after the side-by-side runs.
    assert_eq!(tch::get_num_threads(), 1);
    let _ = std::fs::remove_dir_all(&tmp);
}
