//! `Plan::parallel_arms`: the from-scratch and the pre-trained run of a task side by side give
//! exactly the results of the same runs one after the other (each run is seeded, builds its
//! model under a lock, and SNLI-VE fine-tuning draws nothing from torch's generator); with
//! `shapes_scratch: false` the pre-trained run alone gives the same result again.
use tch::Device;
use vlp_tasks::quickstart::runner::TaskKind;
use vlp_tasks::quickstart::{run_plan_with, Plan, RunOptions};

/// The tests of this file run one at a time: the side-by-side comparison is exact to the bit,
/// and once (of five runs) it differed while the other test ran beside it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn side_by_side_runs_match_sequential_runs() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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

    // `shapes_scratch: false`: the pre-trained arm alone, the same result; no from-scratch
    // value, and the task does not count as a win.
    plan.shapes_scratch = false;
    let again = RunOptions {
        pretrained: Some(tmp.join("a").join("pretrain")),
        tasks: vec![TaskKind::Ve],
    };
    let only = run_plan_with(&plan, &tmp.join("c"), &shapes, None, Device::Cpu, &again).unwrap();
    let c = &only.tasks["ve"];
    assert_eq!(c.pretrained, a.pretrained, "{c:?}");
    assert_eq!(c.pretrained_details, a.pretrained_details);
    assert_eq!(c.from_scratch, None);
    assert!(c.from_scratch_details.is_empty());
    assert_eq!(only.pretrained_wins, 0);
    assert!(!tmp.join("c").join("ve-scratch").exists());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `--pretrained DIR` tokenizes with the vocabulary beside `DIR` (a quickstart run's
/// `vocab.txt`), so that the checkpoint's word embeddings keep their word ids; it says how many
/// of this run's words that vocabulary lacks, and leaves an identical one alone.
#[test]
fn a_pretrained_run_brings_its_vocabulary() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = std::env::temp_dir().join(format!("vlp-quickstart-vocab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let plan = Plan::test(0);
    let shapes = tmp.join("shapes");
    vlp_tasks::quickstart::ensure_shapes(&plan.shapes, &shapes).unwrap();
    let out = tmp.join("run");
    std::fs::create_dir_all(&out).unwrap();
    let mut ctx =
        vlp_tasks::quickstart::runner::Ctx::new(&plan, &out, &shapes, None, Device::Cpu).unwrap();
    let mine = std::fs::read_to_string(out.join("vocab.txt")).unwrap();
    // The same vocabulary beside the checkpoint: nothing to do.
    let same = tmp.join("same");
    std::fs::create_dir_all(same.join("pretrain")).unwrap();
    std::fs::write(same.join("vocab.txt"), &mine).unwrap();
    assert_eq!(ctx.adopt_vocab(&same.join("pretrain")).unwrap(), None);
    // None at all: nothing to do.
    assert_eq!(ctx.adopt_vocab(&tmp.join("nowhere")).unwrap(), None);
    // Another one: adopted, the words it lacks counted.
    let lines: Vec<&str> = mine.lines().collect();
    let theirs: String = lines[..lines.len() - 3]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + "zebra\n";
    let other = tmp.join("other");
    std::fs::create_dir_all(other.join("pretrain")).unwrap();
    std::fs::write(other.join("vocab.txt"), &theirs).unwrap();
    assert_eq!(ctx.adopt_vocab(&other.join("pretrain")).unwrap(), Some(3));
    assert_eq!(
        std::fs::read_to_string(out.join("vocab.txt")).unwrap(),
        theirs
    );
    // From a checkpoint file inside a run directory's `pretrain/checkpoints/step-N/`.
    let deep = tmp.join("deep");
    let step = deep
        .join("pretrain")
        .join("checkpoints")
        .join("step-00000001");
    std::fs::create_dir_all(&step).unwrap();
    std::fs::write(step.join("model.safetensors"), b"").unwrap();
    std::fs::write(deep.join("vocab.txt"), &mine).unwrap();
    // (The run's vocabulary is `theirs` by now: its "zebra" is the one word lacking.)
    assert_eq!(
        ctx.adopt_vocab(&step.join("model.safetensors")).unwrap(),
        Some(1)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("vocab.txt")).unwrap(),
        mine
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
