# frozen_string_literal: true

class CronReportJob
  include Rustq::Job
end

class CronCleanupJob < ActiveJob::Base
  queue_as :maintenance
  def perform(*) = nil
end

RSpec.describe Rustq::Cron do
  it "creates a schedule in sidekiq-cron 2.x's keys and formats, and reads it back" do
    schedule = described_class.create("nightly report", cron: "0 3 * * * Europe/Berlin", class: CronReportJob,
                                                        args: [42, "full"], queue: "low", description: "the report")
    expect(redis.smembers("cron_jobs:default")).to eq(["cron_job:default:nightly report"])
    hash = redis.hgetall("cron_job:default:nightly report")
    expect(hash).to include("name" => "nightly report", "namespace" => "default", "klass" => "CronReportJob",
                            "cron" => "0 3 * * * Europe/Berlin", "args" => '[42,"full"]', "status" => "enabled",
                            "source" => "dynamic", "active_job" => "0", "last_enqueue_time" => "",
                            "message" => '{"queue":"low","class":"CronReportJob","args":[42,"full"]}')
    expect(redis.zcard("cron_job:default:nightly report:enqueued")).to eq(1) # the passed tick, marked
    expect(schedule).to have_attributes(name: "nightly report", klass: "CronReportJob", queue: "low", args: [42, "full"],
                                        status: "enabled", missed: "latest", overlap: "allow")
    expect(schedule.next_time).to be > Time.now
    expect([1, 2]).to include(schedule.next_time.utc.hour) # 03:00 in Berlin: 02:00 UTC in winter, 01:00 in summer
    expect(described_class.all.map(&:name)).to eq(["nightly report"])
  end

  it "updates, disables, enables, enqueues now and destroys" do
    described_class.create("digest", cron: "@daily", class: "DigestJob")
    described_class.update("digest", queue: "mail", overlap: "skip_if_running")
    expect(described_class.find("digest")).to have_attributes(queue: "mail", overlap: "skip_if_running", cron: "@daily")

    described_class.disable("digest")
    expect(redis.hget("cron_job:default:digest", "status")).to eq("disabled")
    expect(described_class.find("digest")).not_to be_enabled
    described_class.enable("digest")
    expect(described_class.find("digest")).to be_enabled

    jid = described_class.enqueue("digest")
    payload = queue_payloads("mail").first
    expect(payload).to include("jid" => jid, "class" => "DigestJob", "queue" => "mail", "args" => [],
                               "rustq_cron" => "default:digest")
    expect(described_class.jid_history("digest").first).to include(jid: jid)
    expect(described_class.find("digest").last_enqueue_time).to be_within(5).of(Time.now)

    expect(described_class.destroy("digest")).to be(true)
    expect(described_class.find("digest")).to be_nil
    expect(redis.keys("cron_job:*")).to eq([])
    expect(described_class.destroy("digest")).to be(false)
  end

  it "records an ActiveJob class as one, and enqueues it in Rails' wrapper" do
    described_class.create("cleanup", cron: "0 * * * *", class: CronCleanupJob, queue: "maintenance")
    expect(redis.hget("cron_job:default:cleanup", "active_job")).to eq("1")
    described_class.enqueue("cleanup")
    payload = queue_payloads("maintenance").first
    expect(payload).to include("class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "CronCleanupJob")
    expect(payload["args"].first).to include("job_class" => "CronCleanupJob", "queue_name" => "maintenance", "arguments" => [])
  end

  it "refuses a schedule that cannot run with a message naming it, writing nothing" do
    expect { described_class.create("bad", cron: "0 25 * * *", class: "ReportJob") }
      .to raise_error(Rustq::Cron::InvalidSchedule, /schedule "bad": `cron`: cron line "0 25 \* \* \*" is not valid/)
    expect { described_class.create("zone", cron: "0 3 * * * Mars/Olympus", class: "ReportJob") }
      .to raise_error(ArgumentError, /unknown time zone "Mars\/Olympus"/)
    expect { described_class.create("noclass", cron: "@daily") }
      .to raise_error(Rustq::Cron::InvalidSchedule, /schedule "noclass": `class` must be a job class name/)
    expect { described_class.create("typo", cron: "@daily", class: "A", overlpa: "allow") }
      .to raise_error(Rustq::Cron::InvalidSchedule, /unknown `overlpa`/)
    expect(redis.keys("*")).to eq([])
    expect { described_class.disable("nothing") }.to raise_error(Rustq::Cron::ScheduleNotFound, /no schedule named "nothing"/)
    expect { described_class.enqueue("nothing") }.to raise_error(Rustq::Cron::ScheduleNotFound)
  end

  it "is managed with `bundle exec rustq-worker cron` as with the standalone binary's command" do
    described_class.create("digest", cron: "@daily", class: "DigestJob")
    run = lambda do |*args|
      out = IO.popen({"REDIS_URL" => REDIS_SERVER.url}, ["ruby", "-I", "lib", "exe/rustq-worker", "cron", *args],
        chdir: File.expand_path("../..", __dir__), err: [:child, :out], &:read)
      [$?.exitstatus, out]
    end
    status, out = run.call("list")
    expect([status, out]).to match([0, a_string_including("digest", "@daily", "DigestJob", "enabled")])
    expect(run.call("disable", "digest")).to eq([0, "disabled digest\n"])
    expect(redis.hget("cron_job:default:digest", "status")).to eq("disabled")
    status, out = run.call("enable", "nothing")
    expect([status, out]).to match([1, a_string_including("no schedule named \"nothing\"")])
  end
end
