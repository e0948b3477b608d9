# frozen_string_literal: true

# rustq_options' limits, as the pushing side writes them: keys computed from the arguments and
# stored in the payload, a unique job's lock taken with its push, bad options refused with nothing
# written. (The engine's side — what runs when — is tests/tests/limits.rs.)
RSpec.describe "rustq_options unique_for, concurrency and throttle" do
  def job_class(name, **options)
    stub_const(name, Class.new {
      include Rustq::Job
      rustq_options(**options)
      def perform(*) = nil
    })
  end

  it "computes each job's concurrency and throttle keys from its arguments and stores them in the payload" do
    job_class("ChargeJob", concurrency: {limit: 3, key: ->(account_id, *) { "acct:#{account_id}" }},
      throttle: {limit: 100, period: 60, key: "gateway"})
    ChargeJob.perform_async(7, "x")
    payload = queue_payloads.first
    expect(payload["concurrency"]).to eq("key" => "acct:7", "limit" => 3)
    expect(payload["throttle"]).to eq("key" => "gateway", "limit" => 100, "period" => 60.0)

    jids = Rustq::Client.push_bulk("class" => ChargeJob, "args" => [[1], [2]])
    expect(jids.compact.size).to eq(2)
    expect(queue_payloads.last(2).map { |p| p["concurrency"]["key"] }).to contain_exactly("acct:1", "acct:2")
  end

  it "keys by the class name when no key is given" do
    job_class("ReportJob", concurrency: {limit: 1})
    ReportJob.perform_async
    expect(queue_payloads.first["concurrency"]).to eq("key" => "ReportJob", "limit" => 1)
  end

  it "pushes a unique job once while its lock is held, nil for the duplicates, or raises when the class asks" do
    job_class("SyncJob", unique_for: 600)
    jid = SyncJob.perform_async(1)
    expect(jid).to be_a(String)
    expect(SyncJob.perform_async(1)).to be_nil
    expect(SyncJob.perform_async(2)).to be_a(String) # other arguments, other lock
    expect(queue_payloads.size).to eq(2)
    lock = redis.keys("rustq:unique:*")
    expect(lock.size).to eq(2)
    expect(redis.ttl(lock.first)).to be_between(590, 600)
    expect(queue_payloads.last).to include("unique_for" => 600.0, "unique_digest" => a_string_matching(/\A\h{40}\z/))
    listed = Rustq::Limits.list["unique"]
    expect(listed.map { |l| l["jid"] }).to match_array(queue_payloads.map { |p| p["jid"] })
    expect(listed.map { |l| l["expires_in"] }).to all(be_between(590, 600))

    job_class("StrictJob", unique_for: 60, unique_conflict: :raise)
    StrictJob.perform_async(1)
    expect { StrictJob.perform_async(1) }.to raise_error(Rustq::NotUnique, /StrictJob not pushed/)
    expect(queue_payloads.last).not_to have_key("unique_conflict")
  end

  it "counts only the arguments unique_by picks, and a scheduled job's lock lasts until its time plus unique_for" do
    job_class("PickJob", unique_for: 60, unique_until: :start, unique_by: ->(args) { args.first })
    expect(PickJob.perform_async(1, "a")).to be_a(String)
    expect(PickJob.perform_async(1, "b")).to be_nil
    expect(queue_payloads.first).to include("unique_until" => "start", "unique_args" => [1])

    job_class("LaterJob", unique_for: 60)
    LaterJob.perform_in(600, 1)
    expect(LaterJob.perform_in(600, 1)).to be_nil
    expect(scheduled.size).to eq(1)
    ttl = redis.ttl(redis.keys("rustq:unique:*").find { |k| redis.hkeys(k).include?(scheduled.first.first["jid"]) })
    expect(ttl).to be_between(650, 660)
  end

  it "refuses options that cannot hold with a message naming them, and writes nothing" do
    cases = {
      {concurrency: {limit: 0, key: "a"}} => /Job 'concurrency' 'limit' must be an Integer of at least 1, got 0/,
      {concurrency: {limit: 2, key: ->(*) { 42 }}} => /Job 'concurrency' 'key' must be a String, got a number/,
      {throttle: {limit: 2, key: "a"}} => /Job 'throttle' 'period' must be a number of seconds above 0/,
      {unique_for: 60, unique_until: :finish} => /Job 'unique_until' must be "start", "success" or "expired"/,
      {unique_for: "soon"} => /Job 'unique_for' must be a number of seconds above 0/
    }
    cases.each_with_index do |(options, message), i|
      job_class("BadJob#{i}", **options)
      expect { Object.const_get("BadJob#{i}").perform_async(1) }.to raise_error(Rustq::InvalidJob, message)
    end
    job_class("BulkUniqueJob", unique_for: 60)
    expect { Rustq::Client.push_bulk("class" => BulkUniqueJob, "args" => [[1], [2]], "at" => [Time.now.to_f + 60, Time.now.to_f + 120]) }
      .to raise_error(Rustq::InvalidJob, /Unique jobs cannot be bulk pushed with one 'at' per job/)
    expect(redis.keys("*")).to be_empty
  end
end
